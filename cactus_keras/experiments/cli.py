"""`cactus-keras experiment CONFIG.toml --output DIR`."""

from __future__ import annotations

import os


def add_parser(subparsers):
    p = subparsers.add_parser(
        "experiment",
        help="train and compare methods from a TOML config; write tables and plots",
        description="Train every method of an experiment config (CACTUS and the baselines "
        "ibp-then-compress, ibp-then-finetune, tfmot), certify each over the compression "
        "grid and the int8 file, and write DIR/results.json, results.csv, runs.csv, "
        "report.md and PNG plots. Finished runs in DIR are not rerun. Configs: "
        "examples/configs/.",
    )
    p.add_argument("config", help="experiment config (.toml)")
    p.add_argument("--output", required=True, help="output directory (reused to resume)")
    p.add_argument("--seeds", type=int, default=None, help="runs per method, seeds 0..N-1 (overrides the config)")
    p.add_argument("--check", action="store_true", help="validate the config and the data, print the plan, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_experiment)


def _run_experiment(args):
    from cactus_keras.experiments.config import load_config

    config = load_config(args.config, seeds=args.seeds)
    command = f"cactus-keras experiment {args.config} --output {args.output}"
    if args.seeds is not None:
        command += f" --seeds {args.seeds}"
    if args.check:
        from cactus_keras.data import load
        from cactus_keras.experiments.runner import _preflight

        data = load(config.dataset, download=config.download)
        _preflight(config, data, args.output)
        print(f"{config.name}: {data.name} ({data.source}), epsilon {config.epsilon:g}, "
              f"{config.seeds} seed(s)")
        for name in config.ordered_runs():
            print(f"  {name}: {config.methods[name].spec()}")
        return 0
    from cactus_keras.experiments.runner import run_experiment

    report = run_experiment(config, args.output, progress=not args.no_progress, command=command)
    print(f"report: {report}")
    print(f"plots:  {os.path.join(args.output, 'certified_vs_pruning.png')}, "
          f"{os.path.join(args.output, 'clean_vs_certified.png')}")
    return 0
