"""Fine-tunes a trained network with the int8 file member (`Int8FileQuantization`) and
compares the certificates of its int8 file with the original network's file.

The original's file is exported with calibrated ranges (as the experiment grid does);
the fine-tuned network's with the ranges the member trained for. Both are certified by
`verify_tflite` on the first --test-samples test images under both rounding models, and
the float networks by IBP.

    python tools/finetune_int8_file.py \
        --network results/experiments/fashion_mnist_cpu/runs/ibp/seed0/network.keras \
        --output results/int8_file_finetune --epochs 2
"""

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import cactus_keras  # noqa: E402
from cactus_keras import export  # noqa: E402
from cactus_keras.compression import Int8FileQuantization  # noqa: E402
from cactus_keras.int8.rounding import ROUNDINGS  # noqa: E402


def certificates(path, x, y, epsilon):
    found = {}
    for rounding in ROUNDINGS:
        result = export.verify_tflite(path, x, y, epsilon, rounding=rounding, verbose=0)
        found[rounding] = {"clean_accuracy": result.clean_accuracy,
                           "certified_accuracy": result.certified_accuracy,
                           "simulation_agreement": result.simulation_agreement}
    return found


def float_certificate(network, x, y, epsilon):
    result = cactus_keras.certify(network, x, y, epsilon=epsilon, bound="ibp")
    return {"clean_accuracy": result.clean_accuracy, "certified_accuracy": result.certified_accuracy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", required=True)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--standard-weight", type=float, default=0.25)
    parser.add_argument("--train-samples", type=int, default=None,
                        help="fine-tune on the first N training images (default all)")
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--calibration-samples", type=int, default=500)
    parser.add_argument("--with-full-network", action="store_true",
                        help="train the full network beside the member (CACTUS) instead of "
                             "the member alone (certified fine-tuning of the file)")
    parser.add_argument("--recommended-set", default=None, metavar="CONFIG",
                        help="train the full network, the members of CONFIG's cactus run "
                             "(its member_weight and member_batch_fraction) and the int8 file "
                             "member; also certify the files of the pruned networks")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    data = cactus_keras.data.load(args.dataset, download=False)
    x_train, y_train = data.x_train[:args.train_samples], data.y_train[:args.train_samples]
    x, y = data.x_test[:args.test_samples], data.y_test[:args.test_samples]
    calibration = data.x_train[:args.calibration_samples]

    original = keras.saving.load_model(args.network, compile=False)
    before_path = os.path.join(args.output, "original.int8.tflite")
    export.to_tflite(original, before_path, calibration,
                     num_calibration_samples=args.calibration_samples)
    report = {"command": shlex.join(["python", *sys.argv]), "network": args.network,
              "epsilon": args.epsilon, "test_samples": len(y),
              "original": {"float": float_certificate(original, x, y, args.epsilon),
                           "file": certificates(before_path, x, y, args.epsilon)}}

    keras.utils.set_random_seed(0)
    network = keras.saving.load_model(args.network, compile=False)
    member = Int8FileQuantization()
    members, options = [member], {"include_full_network": args.with_full_network}
    if args.recommended_set:
        from cactus_keras.compression import members_from_tables
        from cactus_keras.experiments import load_config

        config = load_config(args.recommended_set)
        train_config = config.train_config(config.methods["cactus"].overrides(), seed=0)
        members = members_from_tables(list(train_config.compression)) + [member]
        options = {"include_full_network": True, "member_weight": train_config.member_weight,
                   "member_batch_fraction": train_config.member_batch_fraction}
    model = cactus_keras.CactusModel(network, epsilon=args.epsilon, compression=members,
                                     standard_weight=args.standard_weight, seed=0, **options)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=10.0))
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        verbose=2)
    seconds = time.perf_counter() - start
    after_path = os.path.join(args.output, "finetuned.int8.tflite")
    export.to_tflite(model, after_path, calibration,
                     num_calibration_samples=args.calibration_samples)
    report["finetuned"] = {
        "float": float_certificate(model.network, x, y, args.epsilon),
        "file": certificates(after_path, x, y, args.epsilon),
        "member_quantization": member.tensor_quantization(model),
        "training_seconds": seconds,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
    }
    # The member's own certificate of the file on the same samples (never more than
    # the verifier's, under the member's rounding model).
    if args.recommended_set:
        from cactus_keras.experiments.methods import pruned_copy

        for name, net in (("original", original), ("finetuned", model.network)):
            report[name]["pruned_files"] = {}
            for method, ratio in (("global_l1", 0.9), ("global_l2_structured", 0.5)):
                path = os.path.join(args.output, f"{name}_{method}_{ratio:g}.int8.tflite")
                export.to_tflite(pruned_copy(net, method, ratio), path, calibration,
                                 num_calibration_samples=args.calibration_samples)
                report[name]["pruned_files"][f"{method} {ratio:g}"] = certificates(
                    path, x, y, args.epsilon)
    own = member.certified(model, x, y, args.epsilon)
    report["finetuned"]["member_certified_accuracy"] = float(own.mean())
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    for name in ("original", "finetuned"):
        r = report[name]
        print(f"{name}: float IBP {r['float']['certified_accuracy']:.4f} (clean "
              f"{r['float']['clean_accuracy']:.4f}); file " + ", ".join(
                  f"{m} {r['file'][m]['certified_accuracy']:.4f}" for m in ROUNDINGS)
              + f" (clean {r['file']['nearest']['clean_accuracy']:.4f})")
        for level, found in r.get("pruned_files", {}).items():
            print(f"  file of {level}: " + ", ".join(
                f"{m} {found[m]['certified_accuracy']:.4f}" for m in ROUNDINGS))
    print(f"member's own certificate of the file: "
          f"{report['finetuned']['member_certified_accuracy']:.4f}; {seconds:.0f} s training")


if __name__ == "__main__":
    main()
