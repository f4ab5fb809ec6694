"""A check of the AWP proxy on trained networks: is the loss at the worst point of the
AWP ball an upper bound of the loss of the quantized network?

For each run folder (a network.keras and its config.json), each bit width and each
radius eta, on the first --samples test images at the run's epsilon:

- inside: the share of kernel weights whose quantized value lies inside the AWP ball
  |q(w) - w| <= eta * step (round-to-nearest moves a weight by at most half a step, so
  this is 1 from eta 0.5 on, unless a kernel clips);
- the mean certified loss (worst-case IBP) at the fake-quantized kernels, and at the
  AWP point of the `AWPQuantization` member itself, with 1 ascent step (as trained) and
  with 10 steps (a stronger search of the same ball);
- holds: whether the 1-step AWP loss is at least the quantized network's loss (the
  proxy bounds what it stands for on these samples).

    python tools/awp_proxy.py --runs runs/awp/runs/*/seed0 --bits 8 4 --eta 0.1 0.25 0.5 1.0
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from cactus_keras import data as datasets  # noqa: E402
from cactus_keras.bounds import input_box, margin_lower_bounds, parse_network  # noqa: E402
from cactus_keras.compression import AWPQuantization, compressible_kernels  # noqa: E402
from cactus_keras.compression.member import MemberContext  # noqa: E402
from cactus_keras.compression.quantization import fake_quantize, quantization_scale  # noqa: E402
from cactus_keras.training.losses import certified_loss  # noqa: E402


def fail(message):
    print(f"awp_proxy: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_run(directory):
    paths = [os.path.join(directory, name) for name in ("network.keras", "config.json")]
    for path in paths:
        if not os.path.exists(path):
            fail(f"--runs {directory}: no {os.path.basename(path)} there; give run folders "
                 "of `cactus-keras train` or of an experiment (runs/NAME/seedS).")
    with open(paths[1]) as f:
        config = json.load(f)
    return keras.saving.load_model(paths[0], compile=False), config


def measure(network, x, y, epsilon, bits, eta, batch):
    graph = parse_network(network)
    kernels = compressible_kernels(network)
    values = [ops.convert_to_tensor(k.value) for k in kernels]

    def loss_at(kernel_values, xb, yb):
        with keras.StatelessScope(state_mapping=list(zip(kernels, kernel_values))):
            margins = margin_lower_bounds(graph, input_box(xb, epsilon), yb, "ibp")
        return ops.mean(certified_loss(yb, margins))

    quantized = [fake_quantize(v, bits, True) for v in values]
    inside = [ops.abs(q - v) <= eta * quantization_scale(v, bits, True) * (1 + 1e-6)
              for q, v in zip(quantized, values)]
    share = sum(float(ops.sum(ops.cast(i, "float32"))) for i in inside) / sum(
        int(np.prod(v.shape)) for v in values)
    totals = {"quantized": 0.0, "awp1": 0.0, "awp10": 0.0}
    for start in range(0, len(x), batch):
        xb = ops.convert_to_tensor(x[start:start + batch])
        yb = ops.convert_to_tensor(y[start:start + batch])
        weight = len(xb) / len(x)
        totals["quantized"] += weight * float(loss_at(quantized, xb, yb))
        for steps in (1, 10):
            member = AWPQuantization(bits=bits, awp_radius=eta, awp_steps=steps)
            context = MemberContext(name=member.name, step=0, seed_generator=None, training=True,
                                    loss=lambda v, xb=xb, yb=yb: loss_at(v, xb, yb))
            point = member.compress(values, context)
            totals[f"awp{steps}"] += weight * float(loss_at(point, xb, yb))
    return share, totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders")
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    parser.add_argument("--eta", nargs="+", type=float, default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--samples", type=int, default=1000, help="first N test images")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--output", default=None, help="also write the table here")
    args = parser.parse_args()
    if args.samples < 1:
        fail(f"--samples must be a positive number of test images, got {args.samples}.")
    if any(b < 2 or b > 8 for b in args.bits):
        fail(f"--bits must be bit widths from 2 to 8, got {args.bits}.")
    if any(not e >= 0 for e in args.eta):
        fail(f"--eta must be radii >= 0 in quantization steps, got {args.eta}.")
    lines = ["| run | bits | eta | inside | loss quantized | loss AWP 1 step | "
             "loss AWP 10 steps | holds |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    loaded = {}
    for directory in args.runs:
        network, config = load_run(directory)
        if config["dataset"] not in loaded:
            loaded[config["dataset"]] = datasets.load(config["dataset"])
        dataset = loaded[config["dataset"]]
        x, y = dataset.x_test[:args.samples], dataset.y_test[:args.samples]
        name = os.path.relpath(directory)
        for bits in args.bits:
            for eta in args.eta:
                share, loss = measure(network, x, y, config["epsilon"], bits, eta, args.batch)
                holds = "yes" if loss["awp1"] >= loss["quantized"] else "no"
                lines.append(f"| {name} | {bits} | {eta:g} | {share:.4f} | {loss['quantized']:.4f} | "
                             f"{loss['awp1']:.4f} | {loss['awp10']:.4f} | {holds} |")
                print(lines[-1], flush=True)
    header = (f"awp_proxy: worst-case IBP certified loss on the first {len(x)} test images at "
              "each run's epsilon; inside = share of kernel weights whose quantized value "
              "lies in the AWP ball")
    text = "\n".join([header, ""] + lines) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
