"""`cactus-keras shrink`: a structured-pruned network saved as a plain, narrower one.

The command line of `cactus_keras.compression.shrink` (physical structured pruning):
the Dense/Conv output channels whose kernel is all zero are removed, with what they
feed, and the narrower network is saved. Prints each layer's width before and after and
the parameter counts.

    cactus-keras shrink --model pruned.keras --output small.keras
    cactus-keras shrink --model runs/cactus/model.keras --ratio 0.5 --output small.keras
"""

from __future__ import annotations

import os


def add_parser(subparsers):
    p = subparsers.add_parser(
        "shrink",
        help="remove the pruned channels of a structured-pruned network for real",
        description="Rebuild a structured-pruned network as a plain, narrower Keras model: "
        "the output channels (units) of Dense and Conv layers whose kernel is all zero are "
        "removed, with their batch-norm entries and the next layer's input channels, and "
        "their constant output is folded into the next layer's bias, so the narrower "
        "network computes what the pruned one does (its int8 file is really smaller). "
        "Prints each layer's width before and after and the parameter counts.",
    )
    p.add_argument("--model", required=True,
                   help="a structured-pruned network or a CactusModel (.keras; a "
                   "CactusModel's network is shrunk)")
    p.add_argument("--output", required=True, help="path of the narrower network (.keras)")
    p.add_argument("--ratio", type=float, default=None,
                   help="prune this fraction of the hidden output channels first (global L2 "
                   "structured, as the structured pruning member ranks them); default: "
                   "shrink the zero channels the model already has")
    p.add_argument("--overwrite", action="store_true", help="replace the file at --output if there is one")
    p.set_defaults(run=_run_shrink, check_flags=_check_flags)


def _check_flags(args):
    """Every flag checked before TensorFlow is imported."""
    if not args.model.endswith(".keras"):
        raise ValueError(f"--model '{args.model}' is not a .keras file; save the network "
                         "with model.save('NAME.keras').")
    if not os.path.isfile(args.model):
        raise ValueError(f"--model: no .keras file at '{args.model}'; save one with "
                         f"model.save('{args.model}').")
    if not args.output.endswith(".keras"):
        raise ValueError(f"--output '{args.output}' must end in .keras (Keras saves models "
                         "only to .keras files), e.g. --output small.keras.")
    if os.path.isdir(args.output):
        raise ValueError(f"--output '{args.output}' is a directory; give a file path, e.g. "
                         f"{os.path.join(args.output, 'small.keras')}.")
    if os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"--output '{args.output}' already exists; pass --overwrite to "
                         "replace it, or give another path.")
    if os.path.abspath(args.output) == os.path.abspath(args.model):
        raise ValueError("--output is --model; give another path (the pruned network stays "
                         "as it is).")
    if args.ratio is not None and not 0.0 < args.ratio < 1.0:
        raise ValueError(f"--ratio is the fraction of hidden output channels pruned, in "
                         f"(0, 1), got {args.ratio:g}.")


def widths(network):
    """{layer name: output channels (units)} of the network's Dense/Conv layers."""
    from cactus_keras.compression.kernels import AFFINE_KERNEL_LAYERS

    return {layer.name: int(layer.kernel.shape[-1]) for layer in network.layers
            if isinstance(layer, AFFINE_KERNEL_LAYERS)}


def _run_shrink(args):
    from cactus_keras.compress.cli import _load_network
    from cactus_keras.compression import ShrinkError, prune_structured, shrink

    _check_flags(args)
    network = _load_network(args.model)
    if args.ratio is not None:
        network = prune_structured(network, args.ratio)
    try:
        small = shrink(network)
    except ShrinkError as exc:
        raise ValueError(f"--model '{args.model}': {exc}") from None
    before, after = widths(network), widths(small)
    print(f"{'layer':<24} {'before':>7} {'after':>7}")
    for name, width in before.items():
        print(f"{name:<24} {width:>7} {after.get(name, width):>7}")
    old, new = network.count_params(), small.count_params()
    print(f"parameters {old} -> {new} ({old / max(new, 1):.2f}x fewer)")
    if old == new:
        print("no output channel has an all-zero kernel: nothing was removed (prune the "
              "network first, e.g. with --ratio 0.5 or cactus_keras.compression.prune_structured)")
    # Saved beside the target and moved in: an interrupted save leaves no half file.
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".shrink{os.getpid()}.keras")
    try:
        small.save(temporary)
        os.replace(temporary, args.output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    print(f"wrote {args.output}")
    return 0
