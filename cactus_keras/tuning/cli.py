"""`cactus-keras tune`: KerasTuner search over lambda and eta on a dataset."""

from __future__ import annotations

import contextlib
import os
import shlex
import time

from cactus_keras import vocabulary

DEFAULT_TARGETS = "prune:0.7,quantize:8"
DEFAULT_MAX_TRIALS = 10


def add_parser(subparsers):
    p = subparsers.add_parser(
        "tune",
        help="KerasTuner search over lambda (standard weight) and eta (AWP radius)",
        description="Search CACTUS's lambda and eta (and optionally the pruning range and "
        "learning rate) with KerasTuner, maximizing certified accuracy of the full network, "
        "at the target compressions, or their mean. Calling it again with the same "
        "--directory continues the search (finished trials are kept). Writes "
        "DIR/tuning_summary.json, pareto.json, pareto.png and best_hyperparameters.json; "
        "--best also writes DIR/best_model.keras. Distributed: set KERASTUNER_TUNER_ID "
        "(chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT "
        "and start the same command once per process.",
    )
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, digits (scikit-learn's 8x8 digits), or a path (IDX directory or .npz)")
    p.add_argument("--epsilon", required=True, type=float, help="certification and training radius")
    p.add_argument("--targets", default=DEFAULT_TARGETS,
                   help="comma-separated compressions the network must stay certified under "
                   "(what is evaluated): prune:RATIO, prune:RATIO:PRUNING_METHOD, quantize:BITS "
                   f"(weight-only), or none (default {DEFAULT_TARGETS})")
    p.add_argument("--objective", default="mean",
                   help="certified (val_certified_accuracy), compressed "
                   "(val_certified_accuracy_compressed: worst target) or mean "
                   "(val_certified_accuracy_mean), all maximized; default mean")
    p.add_argument("--tuner", default="random", help="random (default), bayesian or hyperband")
    p.add_argument("--max-trials", type=int, default=None,
                   help=f"trials in all, over every call (default {DEFAULT_MAX_TRIALS}; not for hyperband)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial (hyperband: the most per trial)")
    p.add_argument("--directory", required=True, help="search directory (reused to resume)")
    p.add_argument("--project-name", default="cactus",
                   help="KerasTuner's project: the search lives in DIR/PROJECT_NAME")
    p.add_argument("--overwrite", action="store_true", help="delete an existing search in DIR first")
    p.add_argument("--best", action="store_true",
                   help="run no trials: print the best hyperparameters of the search in DIR and "
                   "write DIR/best_model.keras and DIR/best_network.keras")
    p.add_argument("--compression", default=None,
                   help="members of the training set (what trains), as in `train`: none, pruning, "
                   "awp_quantization or pruning+awp_quantization (default: from --targets)")
    p.add_argument("--standard-weight", type=float, nargs="+", default=None, metavar="LAMBDA",
                   help="lambda: LOW HIGH searches that range, one number fixes it (default 0.0 0.9)")
    p.add_argument("--awp-radius", type=float, nargs="+", default=None, metavar="ETA",
                   help="eta in quantization steps: LOW HIGH searches that range (log scale), "
                   "one number fixes it (default 0.25 4.0)")
    p.add_argument("--certified-loss", default="worst-case",
                   help="worst-case (default), mtl-ibp (its alpha is searched) or sabr, as in `train`")
    p.add_argument("--mtl-alpha", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="mtl-ibp: alpha range searched (default 0.05 0.95)")
    p.add_argument("--sabr-lambda", type=float, default=None,
                   help="sabr: fixed small box radius as a fraction of epsilon (default 0.4)")
    p.add_argument("--attack-steps", type=int, default=None,
                   help="mtl-ibp and sabr: PGD steps of the attack inside the loss (default 8)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="fixed learning rate (default 1e-3)")
    p.add_argument("--search-learning-rate", action="store_true", help="search the learning rate in 1e-4..1e-2 (log)")
    p.add_argument("--search-ratio-range", action="store_true",
                   help="search the training pruning range: low in 0..0.5, high in 0.5..0.95 "
                   "(default fixed 0.25..0.75)")
    p.add_argument("--awp-steps", type=int, default=None,
                   help="quantization member: AWP ascent steps (default: 1)")
    p.add_argument("--arch", default="cnn3", help="mlp, cnn3, cnn5 or cnn7")
    p.add_argument("--batch-norm", action="store_true", help="batch norm after each hidden layer")
    p.add_argument("--ibp-init", action="store_true", help="IBP initialization (Shi et al. 2021)")
    p.add_argument("--batch-size", type=int, default=128, help="samples per batch")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--validation-samples", type=int, default=1000,
                   help="first N test samples: validation and objective certificates")
    p.add_argument("--hyperband-factor", type=int, default=None,
                   help="hyperband: the reduction factor between its brackets (default: 3)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the tuner, and of each trial's initialization and batches")
    p.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2],
                   help="Keras's verbosity of each trial's training: 0 silent, 1 progress "
                   "bar, 2 one line per epoch")
    p.add_argument("--no-download", action="store_true",
                   help="never download the dataset (fail at once when there is no local copy)")
    p.set_defaults(run=_run_tune, check_flags=_check_flags)


def _command(args):
    """The canonical command line of a search (written into its results)."""
    parts = ["cactus-keras", "tune", "--dataset", args.dataset, "--epsilon", f"{args.epsilon:g}",
             "--targets", args.targets, "--tuner", args.tuner]
    if args.max_trials is not None:
        parts += ["--max-trials", str(args.max_trials)]
    parts += ["--epochs", str(args.epochs), "--objective", args.objective, "--arch", args.arch]
    for flag, value, default in [
        ("--compression", args.compression, None),
        ("--certified-loss", args.certified_loss, "worst-case"),
        ("--sabr-lambda", args.sabr_lambda, None),
        ("--attack-steps", args.attack_steps, None),
        ("--learning-rate", args.learning_rate, 1e-3),
        ("--awp-steps", args.awp_steps, 1),
        ("--batch-size", args.batch_size, 128),
        ("--limit", args.limit, None),
        ("--validation-samples", args.validation_samples, 1000),
        ("--hyperband-factor", args.hyperband_factor, 3),
        ("--seed", args.seed, 0),
        ("--project-name", args.project_name, "cactus"),
    ]:
        if value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    for flag, pair in (("--standard-weight", args.standard_weight), ("--awp-radius", args.awp_radius),
                       ("--mtl-alpha", args.mtl_alpha)):
        if pair is not None:
            parts += [flag, *(f"{v:g}" for v in pair)]
    for flag, on in (("--batch-norm", args.batch_norm), ("--ibp-init", args.ibp_init),
                     ("--search-learning-rate", args.search_learning_rate),
                     ("--search-ratio-range", args.search_ratio_range)):
        if on:
            parts.append(flag)
    parts += ["--directory", args.directory]
    return " ".join(shlex.quote(p) for p in parts)


# Flags whose default is filled in by _check_flags, so that one given where it does
# not apply can be refused.
_DEFAULTS = {"awp_steps": 1, "hyperband_factor": 3}


def _check_flags(args):
    """The checks of single flags, made before TensorFlow is imported."""
    from cactus_keras import validation

    if not hasattr(args, "given"):
        args.given = {name for name in _DEFAULTS if getattr(args, name) is not None}
        for name, default in _DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    if "hyperband_factor" in args.given and args.tuner != "hyperband":
        raise ValueError(f"--hyperband-factor applies to --tuner hyperband only, not "
                         f"{args.tuner}; drop --hyperband-factor, or use --tuner hyperband.")

    validation.check_epsilon(args.epsilon, "--epsilon")
    validation.check_epsilon_range(args.epsilon, (0.0, 1.0), "--epsilon")
    for flag, values in (("--standard-weight", args.standard_weight), ("--awp-radius", args.awp_radius)):
        if values is not None and len(values) not in (1, 2):
            raise ValueError(f"{flag} takes one number (a fixed value) or two (LOW HIGH, a "
                             f"range), got {len(values)}: {' '.join(f'{v:g}' for v in values)}.")
    if args.mtl_alpha is not None and args.certified_loss != "mtl-ibp":
        raise ValueError(
            f"--mtl-alpha is searched only with --certified-loss mtl-ibp, not "
            f"{args.certified_loss}; drop --mtl-alpha, or add --certified-loss mtl-ibp.")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}.")
    if os.path.exists(args.directory) and not os.path.isdir(args.directory):
        raise ValueError(f"--directory '{args.directory}' is a file; give a directory "
                         "(it is created if missing, and reused to resume).")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--validation-samples", args.validation_samples),
                        ("--awp-steps", args.awp_steps), ("--hyperband-factor", args.hyperband_factor)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}.")
    if args.tuner == "hyperband" and args.max_trials is not None:
        raise ValueError(
            "--max-trials does not apply to --tuner hyperband: Hyperband sets the number "
            "of trials from --epochs (its max_epochs) and --hyperband-factor. Drop "
            "--max-trials, or use --tuner random or bayesian."
        )


def _check_args(args):
    """Everything that can be checked before data is loaded or a model trained."""
    from cactus_keras import models
    from cactus_keras.tuning.objectives import check_objective_name, parse_targets
    from cactus_keras.tuning.search import check_tuner_name

    _check_flags(args)
    check_tuner_name(args.tuner)
    targets = parse_targets(args.targets)
    for name in [o for o in args.objective.split(",") if o.strip()] or [""]:
        check_objective_name(name, targets)
    if args.arch not in models.ARCHITECTURES:
        raise ValueError(f"Unknown --arch {args.arch!r}; expected one of {', '.join(models.ARCHITECTURES)}.")
    if args.tuner == "hyperband":
        if args.epochs < 2:
            raise ValueError("--tuner hyperband needs --epochs >= 2 (the most epochs of a trial).")
    elif args.max_trials is not None and args.max_trials < 1:
        raise ValueError(f"--max-trials must be >= 1, got {args.max_trials}.")
    return targets


def _check_members_flags(args, hypermodel):
    """A flag of a member that the training set does not have would be searched or
    written into the results without effect: refused."""
    compression = hypermodel.compression
    for flag, given, member in (
            ("--awp-radius", args.awp_radius is not None, vocabulary.AWP_QUANTIZATION),
            ("--awp-steps", "awp_steps" in args.given, vocabulary.AWP_QUANTIZATION),
            ("--search-ratio-range", args.search_ratio_range, vocabulary.PRUNING)):
        if given and member not in compression.split("+"):
            raise ValueError(
                f"{flag} configures the {member} member, which this search does not train "
                f"(--compression {compression}, from --targets {args.targets} unless given); "
                f"drop {flag}, or give --compression {vocabulary.TRAIN_COMPRESSIONS[-1]}.")


def _hypermodel(args, shape_holder):
    from cactus_keras import models
    from cactus_keras.tuning.hypermodel import (
        DEFAULT_AWP_RADIUS,
        DEFAULT_MTL_ALPHA,
        DEFAULT_STANDARD_WEIGHT,
        CactusHyperModel,
    )

    def build_network():
        input_shape, num_classes = shape_holder["input_shape"], shape_holder["num_classes"]
        return models.get(args.arch, input_shape, num_classes, batch_norm=args.batch_norm)

    def space(values, default):
        if not values:
            return default
        return values[0] if len(values) == 1 else tuple(values)

    return CactusHyperModel(
        build_network,
        args.epsilon,
        args.targets,
        compression=args.compression,
        epochs=args.epochs,
        standard_weight=space(args.standard_weight, DEFAULT_STANDARD_WEIGHT),
        awp_radius=space(args.awp_radius, DEFAULT_AWP_RADIUS),
        certified_loss=args.certified_loss,
        mtl_alpha=tuple(args.mtl_alpha) if args.mtl_alpha else DEFAULT_MTL_ALPHA,
        sabr_lambda=args.sabr_lambda,
        attack_steps=args.attack_steps,
        learning_rate=args.learning_rate,
        search_learning_rate=args.search_learning_rate,
        search_ratio_range=args.search_ratio_range,
        awp_steps=_DEFAULTS["awp_steps"] if args.awp_steps is None else args.awp_steps,
        ibp_init=args.ibp_init,
        seed=args.seed,
    )


def _search_config(args, hypermodel, data):
    return {
        "dataset": data.name,
        "data_source": data.source,
        "epsilon": args.epsilon,
        "targets": [t.spec for t in hypermodel.targets],
        "compression": hypermodel.compression,
        "objective": args.objective,
        "tuner": args.tuner,
        "max_trials": args.max_trials,
        "epochs": args.epochs,
        "arch": args.arch,
        "batch_norm": args.batch_norm,
        "ibp_init": args.ibp_init,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "validation_samples": args.validation_samples,
        "search_space": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in hypermodel.search_space().items()},
        "awp_steps": args.awp_steps,
        "certified_loss": args.certified_loss,
        "certified_loss_options": {k: v for k, v in hypermodel.loss_options.items() if v is not None},
        "schedule": dict(zip(("warmup_epochs", "ramp_epochs"), hypermodel.schedule(args.epochs))),
        "seed": args.seed,
    }


def _run_tune(args):
    start = time.perf_counter()
    _check_args(args)
    shape = {}
    hypermodel = _hypermodel(args, shape)
    _check_members_flags(args, hypermodel)

    import cactus_keras
    from cactus_keras.tuning.search import is_distributed_chief, is_distributed_worker

    data = cactus_keras.data.load(args.dataset, download=not args.no_download)
    shape.update(input_shape=data.input_shape, num_classes=data.num_classes)
    x, y = data.x_train, data.y_train
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    x_val, y_val = data.x_test[: args.validation_samples], data.y_test[: args.validation_samples]
    project_dir = os.path.join(args.directory, args.project_name)
    config = _search_config(args, hypermodel, data)
    command = _command(args)
    tuner_kwargs = dict(
        objective=args.objective,
        max_trials=args.max_trials or DEFAULT_MAX_TRIALS,
        directory=args.directory,
        project_name=args.project_name,
        seed=args.seed,
        hyperband_factor=args.hyperband_factor,
    )

    if args.best or is_distributed_chief() or is_distributed_worker():
        # --best only reads the search; KerasTuner's chief and workers share the
        # directory by design.
        lock = contextlib.nullcontext()
    else:
        # One search per directory at a time: a second `tune` into it is refused.
        from cactus_keras.run_lock import folder_lock

        lock = folder_lock(args.directory, "--directory",
                           "wait for it to finish, or give another --directory")
    with lock:
        return _search(args, hypermodel, data, x, y, x_val, y_val, project_dir, config,
                       command, tuner_kwargs, start)


def _search(args, hypermodel, data, x, y, x_val, y_val, project_dir, config, command,
            tuner_kwargs, start):
    from cactus_keras.tuning.search import (
        check_resume,
        is_distributed_chief,
        is_distributed_worker,
        make_tuner,
        summarize,
    )

    if args.best:
        if not os.path.exists(os.path.join(project_dir, "oracle.json")):
            raise FileNotFoundError(
                f"No search in {project_dir}: run `cactus-keras tune` with this --directory first."
            )
        check_resume(project_dir, config)
        tuner = make_tuner(hypermodel, args.tuner, **tuner_kwargs)
        return _report_best(tuner, args, command, config)

    args.interrupt_message = lambda _: (
        f"interrupted: finished trials are kept in {project_dir}; resume with: {command}")
    if args.overwrite:
        tuner = make_tuner(hypermodel, args.tuner, overwrite=True, **tuner_kwargs)
        check_resume(project_dir, config)
    else:
        # The settings are saved only once the tuner could be made (a tuner that cannot
        # start, e.g. for a missing dependency, leaves nothing that blocks a retry).
        resumed = check_resume(project_dir, config, save=False)
        tuner = make_tuner(hypermodel, args.tuner, **tuner_kwargs)
        check_resume(project_dir, config)
        if resumed and not is_distributed_worker():
            done = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
            print(f"resuming the search in {project_dir}: {done} trial(s) finished")
    role = "chief" if is_distributed_chief() else ("worker" if is_distributed_worker() else None)
    print(f"data {data.name} ({data.source}): {len(x)} training, {len(x_val)} validation samples")
    print(f"search space: {hypermodel.search_space()}")
    print(f"objective: {args.objective}, targets: {[t.spec for t in hypermodel.targets]}, "
          f"tuner: {args.tuner}" + (f", distributed {role} {os.environ.get('KERASTUNER_TUNER_ID')}" if role else ""))
    tuner.search(x, y, epochs=args.epochs, batch_size=args.batch_size,
                 validation_data=(x_val, y_val), verbose=args.verbose)
    if role == "worker":
        print(f"worker {os.environ.get('KERASTUNER_TUNER_ID')} done in {time.perf_counter() - start:.0f} s")
        return 0
    summary = summarize(tuner, args.directory, command=command, search_config=config,
                        title=f"{data.name}, epsilon {args.epsilon:g}, {args.tuner} search")
    _print_summary(summary)
    print(f"wrote {os.path.join(args.directory, 'tuning_summary.json')}, pareto.json, pareto.png "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def _print_summary(summary):
    from cactus_keras.tuning.objectives import CERTIFIED, CLEAN, COMPRESSED, MEAN

    print(f"trials: {summary['trials_by_status']}")
    header = f"{'trial':>5} {'status':>10} {'clean':>6} {'cert':>6} {'compr':>6} {'mean':>6}  hyperparameters"
    print(header)
    for r in summary["trials"]:
        m = r["metrics"]
        cells = " ".join(f"{m[k]:6.3f}" if k in m else f"{'-':>6}" for k in (CLEAN, CERTIFIED, COMPRESSED, MEAN))
        hps = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in r["hyperparameters"].items())
        print(f"{r['trial_id']:>5} {r['status']:>10} {cells}  {hps}")
    best = summary["best"]
    if best:
        print(f"best trial {best['trial_id']} (score {best['score']:.4f}): {best['hyperparameters']}")


def _report_best(tuner, args, command, config):
    import json

    from cactus_keras.tuning.search import summarize

    summary = summarize(tuner, args.directory, command=command, search_config=config)
    _print_summary(summary)
    if summary["best"] is None:
        raise ValueError(f"The search in {args.directory} has no completed trial yet.")
    print(json.dumps(summary["best"]["hyperparameters"], indent=2))
    import warnings

    with warnings.catch_warnings():
        # The trial checkpoints hold the optimizer state; the rebuilt model has none yet.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.get_best_models(1)[0]
    path = os.path.join(args.directory, "best_model.keras")
    model.save(path)
    model.network.save(os.path.join(args.directory, "best_network.keras"))
    print(f"wrote {path} and best_network.keras (trial {summary['best']['trial_id']}, "
          f"weights of its best epoch)")
    return 0
