"""`cactus-keras compress`: the smallest (or fastest) int8 file that keeps a certified floor."""

from __future__ import annotations

import json
import os
import shlex
import sys

# Kept here (and equal to search.py's, tested) so that building the parser imports
# nothing heavy.
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875)
OBJECTIVES = ("size", "latency")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "compress",
        help="smallest or fastest int8 file whose own certificate stays above a floor",
        description="Search per-layer structured pruning ratios of a trained network: each "
        "candidate is pruned, rebuilt narrower (the pruned channels removed) and screened "
        "by its float IBP certificate on a validation split taken from the training data; "
        "the cheapest that pass, and the unpruned network, are exported to int8 files, "
        "certified exactly (the file's integer certificate) and timed. The chosen file is "
        "the smallest (or fastest) whose certified accuracy on validation is at least "
        "--min-certified; the test set is read once, for its final report. Writes "
        "DIR/chosen.int8.tflite, report.json, pareto.json and pareto.png. With "
        "--finetune-epochs N each pruned finalist is fine-tuned (certified training) for N "
        "epochs after shrinking, before its export. Calling it again with the same "
        "--output resumes.",
    )
    p.add_argument("--model", required=True, help="a trained network or CactusModel (.keras)")
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, digits (scikit-learn's 8x8 digits), or a path (IDX directory or .npz)")
    p.add_argument("--epsilon", required=True, type=float, help="certification radius (L-infinity)")
    p.add_argument("--min-certified", required=True, type=float,
                   help="the floor: certified accuracy of the int8 file on validation, a fraction")
    p.add_argument("--objective", default="size", choices=OBJECTIVES,
                   help="size (bytes of the int8 file, default) or latency (batch-1 LiteRT median)")
    p.add_argument("--output", required=True, help="folder for the results (reused to resume)")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in DEFAULT_RATIOS),
                   help="structured pruning ratios tried per hidden layer, comma-separated")
    p.add_argument("--max-candidates", type=int, default=48,
                   help="candidates screened by float IBP at most (default 48)")
    p.add_argument("--finalists", type=int, default=8,
                   help="int8 files exported and certified at most, besides the unpruned one (default 8)")
    p.add_argument("--screen-slack", type=float, default=0.02,
                   help="a candidate passes the screen at float IBP >= floor - slack (default 0.02)")
    p.add_argument("--validation-samples", type=int, default=1000,
                   help="the last N training samples, held out for every decision (default 1000)")
    p.add_argument("--latency-runs", type=int, default=300, help="timed invokes per file (default 300)")
    # The choices of cactus_keras.int8.rounding, written out so the parser imports nothing.
    p.add_argument("--rounding", default="nearest", choices=("nearest", "floor_ceil"),
                   help="the rounding model every file certificate assumes (default: nearest; "
                   "floor_ceil for any runtime whose requantization errs by less than one unit)")
    p.add_argument("--output-range", default="certified", choices=("certified", "minmax"),
                   help="each file's output range: chosen by its own certificate on training "
                   "images outside the validation split (certified, the default), or TFLite's "
                   "calibrated min/max range")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="epochs of certified fine-tuning (IBP, the narrower network alone) of "
                   "each pruned finalist after shrinking, on the training data minus the "
                   "validation split, before its file is exported (default 0: none)")
    p.add_argument("--finetune-learning-rate", type=float, default=1e-5,
                   help="Adam learning rate of that fine-tune (default 1e-5)")
    p.add_argument("--finetune-standard-weight", type=float, default=0.5,
                   help="lambda, the standard loss's weight in that fine-tune (default 0.5)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the candidate sample and of the fine-tunes (default: 0)")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1],
                   help="1: progress bars and a line per finalist; 0: the result only")
    p.add_argument("--no-download", action="store_true",
                   help="never download the dataset (fail at once when there is no local copy)")
    p.set_defaults(run=_run_compress, check_flags=_check_flags)


def _check_flags(args):
    """Every flag checked before TensorFlow is imported or the output folder is made."""
    from cactus_keras import validation

    validation.check_epsilon(args.epsilon, "--epsilon")
    _ratios(args)
    if not 0.0 <= args.min_certified <= 1.0:
        raise ValueError(f"--min-certified is a certified accuracy in [0, 1], got "
                         f"{args.min_certified:g}.")
    for flag, value in (("--max-candidates", args.max_candidates),
                        ("--finalists", args.finalists),
                        ("--validation-samples", args.validation_samples)):
        validation.check_positive_int(value, flag)
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0 (0: no fine-tune), got {args.finetune_epochs}.")
    if not args.finetune_learning_rate > 0:
        raise ValueError(f"--finetune-learning-rate must be > 0, got {args.finetune_learning_rate:g}.")
    if not 0.0 <= args.finetune_standard_weight <= 1.0:
        raise ValueError(f"--finetune-standard-weight is lambda, in [0, 1], got "
                         f"{args.finetune_standard_weight:g}.")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}.")
    if not os.path.isfile(args.model) or not args.model.endswith(".keras"):
        raise ValueError(f"--model: no .keras file at '{args.model}'; give a model saved "
                         "with model.save('NAME.keras').")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--output '{args.output}' is a file; give a folder.")


def _load_network(path):
    import keras

    import cactus_keras  # noqa: F401  (registers CactusModel for loading)
    from cactus_keras.certification.certificates import network_of

    if not os.path.isfile(path) or not path.endswith(".keras"):
        raise FileNotFoundError(f"--model: no .keras file at '{path}'; save one with model.save('{path}').")
    return network_of(keras.saving.load_model(path, compile=False))


def _ratios(args):
    try:
        ratios = tuple(float(r) for r in args.ratios.split(",") if r.strip())
    except ValueError:
        ratios = ()
    if not ratios or not all(0.0 <= r < 1.0 for r in ratios):
        raise ValueError(f"--ratios must be comma-separated numbers in [0, 1), got {args.ratios!r}.")
    return ratios


def _config(args):
    from cactus_keras import validation
    from cactus_keras.compress.search import SearchConfig

    validation.check_epsilon(args.epsilon, "--epsilon")
    ratios = _ratios(args)
    return SearchConfig(
        epsilon=args.epsilon, min_certified=args.min_certified, objective=args.objective,
        ratios=ratios, max_candidates=args.max_candidates, finalists=args.finalists,
        screen_slack=args.screen_slack, validation_samples=args.validation_samples,
        latency_runs=args.latency_runs, seed=args.seed, rounding=args.rounding,
        output_range=args.output_range,
        finetune_epochs=args.finetune_epochs, finetune_learning_rate=args.finetune_learning_rate,
        finetune_standard_weight=args.finetune_standard_weight,
    )


def _run_compress(args):
    import cactus_keras

    config = _config(args)
    network = _load_network(args.model)
    data = cactus_keras.data.load(args.dataset, download=not args.no_download)
    from cactus_keras.run_lock import folder_lock

    with folder_lock(args.output, "--output"):
        return _search(args, config, network, data)


def _search(args, config, network, data):
    from cactus_keras.compress.search import NoCandidateMeetsFloor, run_search

    command = "cactus-keras " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []) or [])
    with open(os.path.join(args.output, "command.txt"), "w") as handle:
        handle.write(command + "\n")
    try:
        report = run_search(network, data.x_train, data.y_train, config, args.output,
                        load_test=lambda: (data.x_test, data.y_test), verbose=args.verbose)
    except NoCandidateMeetsFloor as exc:
        print(f"cactus-keras compress: {exc}", file=sys.stderr)
        return 3
    report["command"] = command
    with open(os.path.join(args.output, "report.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    return 0
