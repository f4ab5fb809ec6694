"""The `cactus-keras` command line."""

from __future__ import annotations

import argparse
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
    p.add_argument("--method", default="ibp", help="ibp (default), crown-ibp, crown or best")
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
    x, y = (dataset.x_test, dataset.y_test) if args.split == "test" else (dataset.x_train, dataset.y_train)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}.")
        x, y = x[: args.limit], y[: args.limit]
    print(f"model {args.model}: {model.count_params()} parameters")
    print(f"data {dataset.name} ({dataset.source}), {args.split} split, {len(x)} samples")
    result = cactus_keras.certify(
        model, x, y, args.epsilon, method=args.method, batch_size=args.batch_size
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
    lines.append(f"certified accuracy  {result.certified_accuracy:.4f}  ({result.method}, epsilon={result.epsilon:g})")
    report["seconds"] = time.perf_counter() - start
    print("\n".join(lines))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cactus-keras",
        description="Certified training that survives pruning and int8 quantization.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_certify(subparsers)
    return parser


def main(argv=None):
    # TensorFlow's start-up logging drowns the command's own output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"cactus-keras {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
