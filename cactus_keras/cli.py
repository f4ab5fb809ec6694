"""The `cactus-keras` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


def _add_certify(subparsers):
    p = subparsers.add_parser(
        "certify",
        help="clean, PGD and certified accuracy of a saved model",
        description="Certify a saved Keras model (.keras) on a dataset split and report "
        "clean accuracy, accuracy under a PGD attack, and certified accuracy.",
    )
    p.add_argument("--model", required=True, help="path of a model saved with model.save('m.keras')")
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, or a path (IDX directory or .npz)")
    p.add_argument("--epsilon", required=True, type=float, help="L-infinity radius in the data space ([0, 1] images)")
    p.add_argument("--bound", default="ibp", help="bound method: ibp (default), crown-ibp, crown, alpha-crown or best (max of ibp and alpha-crown)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--pgd-steps", type=int, default=20, help="PGD steps per restart; 0 skips the attack")
    p.add_argument("--pgd-restarts", type=int, default=1)
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--json", dest="json_path", default=None, help="write the results as JSON here")
    p.set_defaults(run=_run_certify)


def _load_model(path):
    import keras

    import cactus_keras  # noqa: F401  (registers CactusModel for loading)

    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at '{path}'. Save one with model.save('{path}').")
    if not path.endswith(".keras"):
        raise ValueError(
            f"'{path}' is not a .keras file. Save the model with model.save('model.keras')."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files.
        raise ValueError(f"Could not load the model '{path}': {exc}") from exc


def _run_certify(args):
    import cactus_keras

    start = time.perf_counter()
    model = _load_model(args.model)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, args.split, args.limit)
    print(f"model {args.model}: {model.count_params()} parameters")
    print(f"data {dataset.name} ({dataset.source}), {args.split} split, {len(x)} samples")
    result = cactus_keras.certify(
        model, x, y, args.epsilon, bound=args.bound, batch_size=args.batch_size
    )
    report = {
        "model": args.model,
        "dataset": dataset.name,
        "source": dataset.source,
        "split": args.split,
        **result.to_dict(),
    }
    lines = [
        f"clean accuracy      {result.clean_accuracy:.4f}",
    ]
    if args.pgd_steps > 0:
        attack = cactus_keras.attacks.pgd(
            model, x, y, args.epsilon, steps=args.pgd_steps, restarts=args.pgd_restarts, verbose=1
        )
        broken = int((result.certified & attack.attacked).sum())
        if broken:
            raise RuntimeError(
                f"{broken} certified samples were broken by PGD: the bounds are unsound. "
                "Please report this with the model file."
            )
        report["pgd_accuracy"] = attack.robust_accuracy
        report["pgd"] = {"steps": attack.steps, "restarts": attack.restarts}
        lines.append(f"PGD accuracy        {attack.robust_accuracy:.4f}  ({attack.steps} steps, {attack.restarts} restarts)")
    lines.append(f"certified accuracy  {result.certified_accuracy:.4f}  ({result.bound}, epsilon={result.epsilon:g})")
    report["seconds"] = time.perf_counter() - start
    print("\n".join(lines))
    _write_json(args.json_path, report)
    return 0


def _split(dataset, split, limit):
    """The images and labels of a split, cut to the first `limit` samples."""
    x, y = (dataset.x_test, dataset.y_test) if split == "test" else (dataset.x_train, dataset.y_train)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}.")
        x, y = x[:limit], y[:limit]
    return x, y


def _write_json(path, report):
    if path:
        from cactus_keras import atomic_write

        atomic_write.write_json(path, report)
        print(f"wrote {path}")


def _add_train(subparsers):
    p = subparsers.add_parser(
        "train",
        help="certified training (CACTUS or plain IBP) of a zoo architecture",
        description="Train a network with CactusModel and save DIR/model.keras, "
        "DIR/network.keras, DIR/training_log.csv and DIR/config.json.",
    )
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, or a path")
    p.add_argument("--epsilon", required=True, type=float)
    p.add_argument("--arch", default="cnn3", help="mlp, cnn3, cnn5 or cnn7")
    p.add_argument("--batch-norm", action="store_true", help="batch norm after each hidden layer")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--compression", default="prune", help="none (plain IBP training), prune, quant or prune+quant")
    p.add_argument("--prune-range", type=float, nargs=2, default=(0.25, 0.75), metavar=("A", "B"))
    p.add_argument("--pruning-method", default="global_l1")
    p.add_argument("--bits", type=int, default=8, help="bit width the quantization member targets")
    p.add_argument("--awp-radius", type=float, default=0.5, help="eta: AWP radius in quantization steps")
    p.add_argument("--awp-steps", type=int, default=1, help="AWP ascent steps")
    p.add_argument("--standard-weight", type=float, default=0.5, help="lambda, weight of the standard loss")
    p.add_argument("--bound", default="ibp", help="bound method of the certified loss: ibp or crown-ibp")
    p.add_argument("--certified-loss", default="worst-case",
                   help="worst-case (default: cross-entropy on the margin lower bounds), mtl-ibp "
                   "or sabr")
    p.add_argument("--mtl-alpha", type=float, default=None,
                   help="mtl-ibp: weight of the worst-case loss, in [0, 1] (default 0.5)")
    p.add_argument("--sabr-lambda", type=float, default=None,
                   help="sabr: small box radius as a fraction of epsilon, in (0, 1] (default 0.4)")
    p.add_argument("--attack-steps", type=int, default=None,
                   help="mtl-ibp and sabr: PGD steps of the attack inside the loss (default 8)")
    p.add_argument("--warmup-epochs", type=int, default=1, help="epochs of standard training first")
    p.add_argument("--ramp-epochs", type=int, default=None, help="epsilon ramp length (default: half the remaining epochs)")
    p.add_argument("--ibp-init", action="store_true", help="IBP initialization (Shi et al. 2021)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--validation-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--output", required=True, help="output directory")
    p.set_defaults(run=_run_train)


def _run_train(args):
    import cactus_keras
    from cactus_keras.experiments import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset,
        epsilon=args.epsilon,
        arch=args.arch,
        batch_norm=args.batch_norm,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        compression=args.compression,
        prune_range=tuple(args.prune_range),
        pruning_method=args.pruning_method,
        bits=args.bits,
        awp_radius=args.awp_radius,
        awp_steps=args.awp_steps,
        standard_weight=args.standard_weight,
        bound=args.bound,
        certified_loss=args.certified_loss,
        mtl_alpha=args.mtl_alpha,
        sabr_lambda=args.sabr_lambda,
        attack_steps=args.attack_steps,
        warmup_epochs=args.warmup_epochs,
        ramp_epochs=args.ramp_epochs,
        ibp_init=args.ibp_init,
        limit=args.limit,
        validation_samples=args.validation_samples,
        seed=args.seed,
    )
    data = cactus_keras.data.load(args.dataset, download=not args.no_download)
    model = train(config, data, args.output, verbose=2)
    print(f"saved {os.path.join(args.output, 'model.keras')} ({model.network.count_params()} parameters)")
    return 0


def _add_evaluate(subparsers):
    p = subparsers.add_parser(
        "evaluate",
        help="clean and certified accuracy under pruning and quantization",
        description="Certify a saved model (CactusModel or plain network) after pruning "
        "at each ratio with each method, and after quantizing its kernels to each bit width.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--epsilon", required=True, type=float)
    p.add_argument("--prune", default="0,0.5,0.7", help="comma-separated ratios (empty for none)")
    p.add_argument("--pruning-method", default="global_l1", help="comma-separated pruning methods")
    p.add_argument("--bits", default="", help="comma-separated bit widths of fake-quantized kernels, e.g. 8,4")
    p.add_argument("--bound", default="ibp", help="bound method: ibp, crown-ibp, crown, alpha-crown or best (max of ibp and alpha-crown)")
    p.add_argument("--recalibrate-batchnorm", action="store_true", help="recompute batch-norm statistics of each pruned network on 2048 training samples")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(run=_run_evaluate)


def _parse_list(text, convert, flag):
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list, got {text!r}.") from None


def _run_evaluate(args):
    import cactus_keras

    model = _load_model(args.model)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, "test", args.limit)
    table = cactus_keras.evaluate_compressed(
        model,
        x,
        y,
        args.epsilon,
        pruning=_parse_list(args.prune, float, "--prune"),
        pruning_method=_parse_list(args.pruning_method, str, "--pruning-method"),
        bits=_parse_list(args.bits, int, "--bits"),
        bound=args.bound,
        recalibrate_batchnorm=dataset.x_train if args.recalibrate_batchnorm else None,
    )
    print(table)
    _write_json(args.json_path, {"model": args.model, "dataset": dataset.name, **table.to_dict()})
    return 0


def _add_export(subparsers):
    p = subparsers.add_parser(
        "export",
        help="export a saved model to a full-integer int8 .tflite file",
        description="Export a saved model (CactusModel or plain network) to TFLite, "
        "calibrating the int8 ranges on training samples of the dataset.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default=None,
                   help="calibration data: a dataset name or path (needed for tflite)")
    p.add_argument("--output", required=True, help="path of the .tflite (or .onnx) file")
    p.add_argument("--format", default="tflite", choices=("tflite", "onnx"),
                   help="tflite (default) or onnx (the float network, Keras's ONNX export)")
    p.add_argument("--calibration-samples", type=int, default=500)
    p.add_argument("--float", dest="int8", action="store_false", help="export float32 instead of int8")
    p.add_argument("--no-download", action="store_true")
    p.set_defaults(run=_run_export)


def _run_export(args):
    import cactus_keras.export

    if args.format == "onnx":
        return _run_export_onnx(args)
    if args.dataset is None:
        raise ValueError("--dataset is required for --format tflite: the int8 ranges are "
                         "calibrated on its training images (e.g. --dataset fashion_mnist).")
    model = _load_model(args.model)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, _ = _split(dataset, "train", args.calibration_samples)
    path = cactus_keras.export.to_tflite(
        model, args.output, representative_data=x, int8=args.int8,
        num_calibration_samples=args.calibration_samples,
    )
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {'int8' if args.int8 else 'float32'})")
    return 0


def _run_export_onnx(args):
    from cactus_keras.export.onnx import to_onnx

    path = to_onnx(_load_model(args.model), args.output)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, float32 ONNX)")
    return 0


def _add_export_vnnlib(subparsers):
    p = subparsers.add_parser(
        "export-vnnlib",
        help="a VNN-COMP benchmark folder: ONNX network, VNN-LIB properties, instances.csv",
        description="Write the float network as ONNX and one VNN-LIB robustness property "
        "per test sample (the epsilon box cut to the data range; the label's output stays "
        "above every other), with instances.csv, for alpha-beta-CROWN and other VNN-COMP "
        "verifiers.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True, help="test samples: a dataset name or path")
    p.add_argument("--epsilon", required=True, type=float)
    p.add_argument("--samples", type=int, default=10, help="first N test samples (default 10)")
    p.add_argument("--output", required=True, help="the benchmark folder to write")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per instance in instances.csv (default 300)")
    p.add_argument("--input-range", type=float, nargs=2, default=(0.0, 1.0),
                   metavar=("LOW", "HIGH"), help="data range the boxes are cut to")
    p.add_argument("--no-download", action="store_true")
    p.set_defaults(run=_run_export_vnnlib)


def _run_export_vnnlib(args):
    import cactus_keras
    from cactus_keras.export.vnnlib import write_benchmark

    if args.samples < 1:
        raise ValueError(f"--samples must be a positive number of test samples, got "
                         f"{args.samples}.")
    model = _load_model(args.model)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, "test", args.samples)
    paths = write_benchmark(model, x, y, args.epsilon, args.output,
                            input_range=tuple(args.input_range), timeout=args.timeout)
    print(f"wrote {args.output}: onnx/model.onnx, {len(paths)} VNN-LIB properties "
          f"(epsilon {args.epsilon:g}), instances.csv")
    return 0


def _add_verify_tflite(subparsers):
    p = subparsers.add_parser(
        "verify-tflite",
        help="clean and certified accuracy of an int8 .tflite file as it runs",
        description="Run an int8 .tflite file in the LiteRT interpreter, and certify it by "
        "integer interval propagation through its int8 arithmetic.",
    )
    p.add_argument("path", help="the .tflite file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--epsilon", required=True, type=float)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--kernels", default="default", help="default (XNNPACK), builtin or reference")
    p.add_argument("--rounding", default="floor_ceil",
                   help="floor_ceil (sound for any round-to-nearest kernel, default) or nearest "
                   "(tighter, uses the rounding error of LiteRT's and XNNPACK's kernels)")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(run=_run_verify_tflite)


def _run_verify_tflite(args):
    import cactus_keras.export

    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, "test", args.limit)
    result = cactus_keras.export.verify_tflite(
        args.path, x, y, args.epsilon, kernels=args.kernels, rounding=args.rounding
    )
    print(result.summary())
    _write_json(args.json_path, {"dataset": dataset.name, **result.to_dict()})
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cactus-keras",
        description="Certified training that survives pruning and int8 quantization.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_certify(subparsers)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_export(subparsers)
    _add_export_vnnlib(subparsers)
    _add_verify_tflite(subparsers)
    # Their argparse blocks live beside the code they drive; imports stay lazy there.
    from cactus_keras.experiments.cli import add_parser as add_experiment
    from cactus_keras.tuning.cli import add_parser as add_tune

    add_experiment(subparsers)
    add_tune(subparsers)
    _add_distribute(subparsers)
    return parser


# Commands that train, and the argument naming where each writes, which a multi-worker
# worker other than the chief moves to DIR/worker<index> (the experiment runner does
# it itself, since its config may ask for multi-worker too).
DISTRIBUTED_COMMANDS = {"train": "output", "experiment": None, "tune": "directory"}


def _add_distribute(subparsers):
    for command in DISTRIBUTED_COMMANDS:
        subparsers.choices[command].add_argument(
            "--distribute", default=None,
            help="train over devices or machines: none (default), mirrored (this machine's "
            "devices, TensorFlow), multi-worker (the processes of TF_CONFIG, TensorFlow), "
            "data-parallel (the JAX devices); --batch-size is the global batch",
        )


@contextlib.contextmanager
def _distributed(args):
    """The `--distribute` of a training command, as the default of everything it trains."""
    distribute = getattr(args, "distribute", None)
    if distribute is None:
        yield
        return
    from cactus_keras import backend

    backend.check_distribute(distribute, "--distribute")
    attribute = DISTRIBUTED_COMMANDS.get(args.command)
    if attribute is not None:
        moved = backend.worker_directory(getattr(args, attribute), distribute)
        if moved != getattr(args, attribute):
            print(f"multi-worker: this worker writes into {moved}")
            setattr(args, attribute, moved)
    with backend.distribute_default(distribute):
        yield


def main(argv=None):
    # TensorFlow's start-up logging drowns the command's own output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        with _distributed(args):
            return args.run(args)
    except ModuleNotFoundError as exc:
        # An optional part (TFLite, TF-MOT, TFDS, KerasTuner) without its extra.
        from cactus_keras import extras

        message = extras.message_for(exc)
        if message is None:
            raise
        print(f"cactus-keras {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"cactus-keras {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
