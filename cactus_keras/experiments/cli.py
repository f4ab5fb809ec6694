"""`cactus-keras experiment CONFIG.toml --output DIR`."""

from __future__ import annotations

import os
import shlex


def add_parser(subparsers):
    from cactus_keras.experiments.examples import example_names

    p = subparsers.add_parser(
        "experiment",
        help="train and compare methods from a TOML config; write tables and plots",
        description="Train every method of an experiment config (CACTUS and the baselines "
        "ibp-then-compress, ibp-then-finetune, tfmot), certify each over the compression "
        "grid and the int8 file, and write DIR/results.json, results.csv, runs.csv, "
        "report.md and PNG plots; print the headline (every compressed level: CACTUS "
        "against the best baseline). Finished runs (and finished steps of an interrupted "
        "run) in DIR are not rerun. Shipped configs: --example "
        f"{{{','.join(example_names())}}}.",
    )
    p.add_argument("config", nargs="?", default=None, help="experiment config (.toml)")
    p.add_argument("--example", default=None, metavar="NAME",
                   help="use the shipped example config NAME instead of a file: "
                   + ", ".join(example_names()))
    p.add_argument("--output", required=True, metavar="DIR", help="output directory (reused to resume)")
    p.add_argument("--seeds", type=int, default=None, help="runs per method, seeds 0..N-1 (overrides the config)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="run seed N's runs only (e.g. one process per core, each with its "
                   "own --output; copy their runs/ folders into one and run without --seed "
                   "for the report of all seeds)")
    p.add_argument("--dataset", default=None, metavar="NAME|PATH",
                   help="run on this dataset instead of the config's: mnist, fashion_mnist, digits, "
                   "cifar10, or a path to a directory of IDX files (or CIFAR-10 batches) or "
                   "to an .npz with x_train, y_train, x_test, y_test")
    p.add_argument("--epsilon", type=float, default=None, metavar="E",
                   help="certify and train at this epsilon instead of the config's (use "
                   "its own --output: runs of another epsilon are refused)")
    p.add_argument("--runs", default=None, metavar="NAME[,NAME...]",
                   help="run only these runs of the config (and the runs they start from)")
    p.add_argument("--check", action="store_true", help="validate the config and the data, print the plan, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_experiment, check_flags=_check_flags)


def _check_flags(args):
    """The checks of single flags, made before TensorFlow is imported. (The config's
    own errors name its TOML keys; these name the flags.)"""
    if (args.config is None) == (args.example is None):
        raise ValueError("Give an experiment config (CONFIG.toml) or --example NAME, not "
                         + ("both." if args.config else "(neither was given)."))
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--output '{args.output}' is a file; give a directory (it is "
                         "created if missing, and reused to resume).")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be a positive number of runs per method, got "
                         f"{args.seeds}.")
    if args.epsilon is not None and not 0 < args.epsilon <= 1:
        raise ValueError(f"--epsilon must be in (0, 1] (the radius of the input box, in "
                         f"the data's [0, 1] range), got {args.epsilon:g}.")
    if args.runs is not None and not [n for n in args.runs.split(",") if n.strip()]:
        raise ValueError("--runs must name runs of the config, comma-separated "
                         "(e.g. --runs ibp,cactus), got an empty list.")
    if args.seed is not None and (args.seed < 0 or (args.seeds is not None
                                                     and args.seed >= args.seeds)):
        raise ValueError(f"--seed must be one of the seeds 0..N-1 that are run (N: --seeds "
                         f"or the config's `seeds`), got {args.seed}.")


def _run_experiment(args):
    from cactus_keras.experiments.config import example_config, load_config

    _check_flags(args)
    path = example_config(args.example) if args.example else args.config
    runs = ([n.strip() for n in args.runs.split(",") if n.strip()]
            if args.runs is not None else None)
    config = load_config(path, seeds=args.seeds, dataset=args.dataset, epsilon=args.epsilon,
                         runs=runs)
    source = ["--example", args.example] if args.example else [args.config]
    command = shlex.join(["cactus-keras", "experiment", *source, "--output", args.output]
                         + (["--seeds", str(args.seeds)] if args.seeds is not None else [])
                         + (["--seed", str(args.seed)] if args.seed is not None else [])
                         + (["--epsilon", f"{args.epsilon:g}"] if args.epsilon is not None
                            else [])
                         + (["--runs", args.runs] if args.runs is not None else [])
                         + (["--dataset", args.dataset] if args.dataset is not None else []))
    args.interrupt_message = lambda _: (
        f"interrupted: finished runs and steps are kept in {os.path.join(args.output, 'runs')}; "
        f"resume with: {command}")
    from cactus_keras.experiments.runner import load_data

    data = load_data(config)
    if args.check:
        from cactus_keras.experiments.runner import _preflight

        _preflight(config, data, args.output)
        print(f"{config.name}: {data.name} ({data.source}), epsilon {config.epsilon:g}, "
              f"{config.seeds} seed(s)")
        print(format_plan(config))
        return 0
    from cactus_keras.experiments.runner import run_experiment

    if args.seed is not None and args.seed >= config.seeds:
        raise ValueError(f"--seed {args.seed} is not one of the config's seeds "
                         f"0..{config.seeds - 1}; give one of those, or more --seeds.")
    report = run_experiment(config, args.output, progress=not args.no_progress, command=command,
                            data=data, seed=args.seed)
    from cactus_keras.experiments.report import read_headline

    print(read_headline(args.output))
    print(f"report: {report}")
    print(f"plots:  {os.path.join(args.output, 'certified_vs_pruning.png')}, "
          f"{os.path.join(args.output, 'clean_vs_certified.png')}")
    return 0


# Settings whose pair of numbers is a range (written 0.5-0.95), not a list of values.
_RANGES = ("ratio", "prune_range")


def _value(value, key=""):
    """A spec value as a reader writes it: 0.5-0.95 for a range, a list space-separated,
    names bare."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        if key.rpartition(".")[2] in _RANGES and len(value) == 2:
            return f"{_value(value[0])}-{_value(value[1])}"
        return " ".join(_value(v) for v in value)
    return str(value)


def _flat(table, prefix=""):
    """{"training.arch": "cnn3", ...}; None values (a default not in use) left out."""
    items = {}
    for key, value in table.items():
        if isinstance(value, dict):
            items.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            items[f"{prefix}{key}"] = value
    return items


def _lines(items, indent="    ", width=88):
    """`key value, key value` wrapped to `width`; a list of member tables one per line."""
    lines, line = [], ""
    for key, value in items.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{indent}{key}:")
            for table in value:
                kind = table.get("kind", "")
                rest = ", ".join(f"{k} {_value(v, k)}" for k, v in table.items()
                                 if k != "kind" and v is not None)
                lines.append(f"{indent}  {kind}: {rest}")
            continue
        cell = f"{key} {_value(value, key)}"
        if line and len(indent) + len(line) + 2 + len(cell) > width:
            lines.append(indent + line)
            line = ""
        line = f"{line}, {cell}" if line else cell
    if line:
        lines.append(indent + line)
    return lines


def format_plan(config):
    """The resolved plan of `experiment --check`: the settings every method shares
    once, then each run's own, grouped by table (training, evaluation)."""
    names = config.ordered_runs()
    specs = {name: _flat(config.methods[name].spec()) for name in names}
    common = {k: v for k, v in specs[names[0]].items()
              if len(names) > 1 and all(k in s and s[k] == v for s in specs.values())}
    out = [f"runs, in order: {', '.join(names)}"]

    def grouped(items, indent):
        groups = {}
        for key, value in items.items():
            head, _, rest = key.partition(".")
            groups.setdefault(head if rest else "", {})[rest or key] = value
        lines = []
        for head, group in groups.items():
            if head:
                lines.append(f"{indent}{head}:")
                lines.extend(_lines(group, indent=indent + "  "))
            else:
                lines.extend(_lines(group, indent=indent))
        return lines

    if common:
        out.append("every run:")
        out.extend(grouped(common, "  "))
    out.append("each run's own settings:")
    for name in names:
        own = {k: v for k, v in specs[name].items() if k not in common}
        out.append(f"  {name}:")
        out.extend(grouped(own, "    ") or ["    (nothing of its own)"])
    return "\n".join(out)
