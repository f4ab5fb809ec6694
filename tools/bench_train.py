"""Time per training step: standard, IBP, CACTUS (full + one pruned member), the same
with the member on a batch slice (`member_batch_fraction`, default 0.25) and CACTUS
(full + the AWP quantization member, one ascent step); and the certified losses
(worst-case IBP, MTL-IBP, SABR; PGD of --attack-steps steps) as ratios to the IBP step;
and the recommended configuration of an experiment config (--config, default
fashion_mnist_cpu.toml): its IBP run (the baseline recipe: Shi's regularisers, L1) and
its CACTUS run (the recommended set: every member of its `compression`, its
`member_weight` and `member_batch_fraction`), each built as the experiment builds it,
and the recommended set plus the int8 file member (`int8_file`).

Same network, same batch, one process; the steps are timed in interleaved rounds and the
medians compared as ratios. Also reports the share of the CACTUS step spent computing
pruning masks (the same mask computation, compiled on its own).

    python tools/bench_train.py
    python tools/bench_train.py --arch cnn5 --batch-size 64 --json out.json
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import cactus_keras  # noqa: E402
from cactus_keras import backend  # noqa: E402
from cactus_keras.compression import magnitude_masks, compressible_kernels  # noqa: E402
from cactus_keras.experiments import example_config, load_config  # noqa: E402
from cactus_keras.experiments.training import build_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn3")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--attack-steps", type=int, default=8, help="PGD steps inside MTL-IBP and SABR")
    parser.add_argument("--member-batch-fraction", type=float, default=0.25,
                        help="share of the batch the pruned member of the sliced set trains on")
    parser.add_argument("--config", default=None,
                        help="experiment config whose ibp and cactus runs are timed "
                             "(default: the example fashion_mnist_cpu.toml)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, args.batch_size)

    def network():
        keras.utils.set_random_seed(0)
        return cactus_keras.models.get(args.arch, (28, 28, 1), 10)

    standard = network()
    standard.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ibp = cactus_keras.CactusModel(network(), 0.1)
    ibp.compile(optimizer="adam")
    cactus = cactus_keras.CactusModel(network(), 0.1, compression=[cactus_keras.Pruning(ratio=(0.25, 0.75))])
    cactus.compile(optimizer="adam")
    sliced = cactus_keras.CactusModel(network(), 0.1, compression=[cactus_keras.Pruning(ratio=(0.25, 0.75))],
                                      member_batch_fraction=args.member_batch_fraction)
    sliced.compile(optimizer="adam")
    awp = cactus_keras.CactusModel(network(), 0.1, compression=[cactus_keras.AWPQuantization(bits=8, awp_steps=1)])
    awp.compile(optimizer="adam")
    losses = {}
    for loss in ("mtl-ibp", "sabr"):
        losses[loss] = cactus_keras.CactusModel(network(), 0.1, certified_loss=loss,
                                                attack_steps=args.attack_steps)
        losses[loss].compile(optimizer="adam")
    cactus_mtl = cactus_keras.CactusModel(network(), 0.1, compression=[cactus_keras.Pruning(ratio=(0.25, 0.75))],
                                          certified_loss="mtl-ibp", attack_steps=args.attack_steps)
    cactus_mtl.compile(optimizer="adam")
    config = load_config(args.config or example_config("fashion_mnist_cpu"))
    recipe = {}
    for run in ("ibp", "cactus"):
        if run not in config.methods:
            parser.error(f"--config {config.path} has no [methods.{run}] run to time")
        train_config = config.train_config(config.methods[run].overrides(), seed=0)
        train_config.arch = args.arch
        recipe[run] = build_model(train_config, (28, 28, 1), 10)
    train_config = config.train_config(config.methods["cactus"].overrides(), seed=0)
    train_config.arch = args.arch
    train_config.compression = list(train_config.compression) + [{"kind": "int8_file"}]
    recipe["cactus + int8_file"] = build_model(train_config, (28, 28, 1), 10)
    recommended_members = ", ".join(m.name for m in recipe["cactus"].compression)
    kernels = compressible_kernels(cactus.network)
    seed = keras.random.SeedGenerator(0)

    def masks_only():
        ratio = keras.random.uniform((), 0.25, 0.75, seed=seed)
        return magnitude_masks([k.value for k in kernels], ratio, "global_l1")[0]

    masks_compiled = backend.compile_function(masks_only)

    steps = {
        "standard": lambda: standard.train_on_batch(x, y),
        "ibp": lambda: ibp.train_on_batch(x, y),
        "cactus (full + 1 pruned)": lambda: cactus.train_on_batch(x, y),
        "cactus (full + 1 pruned on a slice)": lambda: sliced.train_on_batch(x, y),
        "cactus (full + AWP)": lambda: awp.train_on_batch(x, y),
        "mask refresh alone": lambda: ops.convert_to_numpy(masks_compiled()),
        "mtl-ibp": lambda: losses["mtl-ibp"].train_on_batch(x, y),
        "sabr": lambda: losses["sabr"].train_on_batch(x, y),
        "cactus mtl-ibp (full + 1 pruned)": lambda: cactus_mtl.train_on_batch(x, y),
        "ibp, the config's recipe": lambda: recipe["ibp"].train_on_batch(x, y),
        "cactus, the recommended set": lambda: recipe["cactus"].train_on_batch(x, y),
        "recommended set + int8_file": lambda: recipe["cactus + int8_file"].train_on_batch(x, y),
    }
    for fn in steps.values():
        for _ in range(3):
            fn()
    samples = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            samples[name].append((time.perf_counter() - start) / args.steps)
    median = {name: statistics.median(v) for name, v in samples.items()}
    ratios = {
        "ibp / standard": median["ibp"] / median["standard"],
        "cactus / ibp": median["cactus (full + 1 pruned)"] / median["ibp"],
        "cactus sliced / ibp": median["cactus (full + 1 pruned on a slice)"] / median["ibp"],
        "cactus awp / ibp": median["cactus (full + AWP)"] / median["ibp"],
        "mask refresh share of cactus step": median["mask refresh alone"] / median["cactus (full + 1 pruned)"],
        "mtl-ibp / ibp": median["mtl-ibp"] / median["ibp"],
        "sabr / ibp": median["sabr"] / median["ibp"],
        "cactus mtl-ibp / ibp": median["cactus mtl-ibp (full + 1 pruned)"] / median["ibp"],
        "recipe ibp / ibp": median["ibp, the config's recipe"] / median["ibp"],
        "recommended / ibp": median["cactus, the recommended set"] / median["ibp"],
        "recommended / recipe ibp": median["cactus, the recommended set"] / median["ibp, the config's recipe"],
        "recommended + int8_file / ibp": median["recommended set + int8_file"] / median["ibp"],
        "recommended + int8_file / recipe ibp": (median["recommended set + int8_file"]
                                                 / median["ibp, the config's recipe"]),
    }
    params = standard.count_params()
    header = (
        f"bench_train: {args.arch} ({params} parameters, {len(kernels)} pruned kernels), batch "
        f"{args.batch_size}, backend {keras.backend.backend()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, median of {args.rounds} rounds of {args.steps} steps, "
        f"{args.attack_steps} PGD steps in mtl-ibp and sabr, sliced member on "
        f"{args.member_batch_fraction:g} of the batch"
    )
    print(header)
    for name, value in median.items():
        print(f"  {name:<36} {1000 * value:9.2f} ms/step")
    print(f"  IBP step / standard step        {ratios['ibp / standard']:.2f}x")
    print(f"  CACTUS step / IBP step          {ratios['cactus / ibp']:.2f}x   (target <= 2.1x: "
          f"{'met' if ratios['cactus / ibp'] <= 2.1 else 'missed'})")
    print(f"  CACTUS sliced step / IBP step   {ratios['cactus sliced / ibp']:.2f}x   (samples "
          f"through the networks: {1 + args.member_batch_fraction:.2f}x an IBP step's)")
    print(f"  CACTUS AWP step / IBP step      {ratios['cactus awp / ibp']:.2f}x   (target <= 2.6x: "
          f"{'met' if ratios['cactus awp / ibp'] <= 2.6 else 'missed'})")
    print(f"  mask refresh / CACTUS step      {100 * ratios['mask refresh share of cactus step']:.1f}%  (target <= 10%: "
          f"{'met' if ratios['mask refresh share of cactus step'] <= 0.10 else 'missed'})")
    print("  certified losses, step / worst-case IBP step:")
    for name in ("mtl-ibp", "sabr", "cactus mtl-ibp"):
        print(f"    {name:<28} {ratios[name + ' / ibp']:.2f}x")
    recommended = recipe["cactus"]
    print(f"  {config.path}: recommended set = full + {recommended_members}, member_weight "
          f"{recommended.member_weight_target:g}, member_batch_fraction {recommended.member_batch_fraction:g}")
    print(f"    recipe IBP step / IBP step        {ratios['recipe ibp / ibp']:.2f}x")
    print(f"    recommended step / IBP step       {ratios['recommended / ibp']:.2f}x")
    print(f"    recommended step / recipe IBP step {ratios['recommended / recipe ibp']:.2f}x")
    with_int8 = ratios["recommended + int8_file / recipe ibp"]
    print(f"    recommended + int8_file / IBP step        {ratios['recommended + int8_file / ibp']:.2f}x")
    print(f"    recommended + int8_file / recipe IBP step {with_int8:.2f}x   (target <= 2.5x: "
          f"{'met' if with_int8 <= 2.5 else 'missed'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "ms_per_step": {k: 1000 * v for k, v in median.items()}, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
