"""The `cactus-keras` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time

from cactus_keras import vocabulary


def _add_certify(subparsers):
    p = subparsers.add_parser(
        "certify",
        help="clean, PGD and certified accuracy of a saved model",
        description="Certify a saved Keras model (.keras) on a dataset split and report "
        "clean accuracy, accuracy under a PGD attack, and certified accuracy.",
    )
    p.add_argument("--model", required=True,
                   help="path of a model saved with model.save('m.keras'): a network, or a "
                   "CactusModel (its network is certified)")
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, digits (scikit-learn's 8x8 digits), or a path (IDX directory or .npz)")
    p.add_argument("--epsilon", required=True, type=float, help="L-infinity radius in the data space ([0, 1] images)")
    p.add_argument("--bound", default="ibp", help="bound method: ibp, crown-ibp, crown, alpha-crown or best (the larger of ibp and alpha-crown)")
    p.add_argument("--split", default="test", choices=["test", "train"], help="dataset split")
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per batch (default: from the bound method and the model)")
    p.add_argument("--pgd-steps", type=int, default=20, help="PGD steps per restart; 0 skips the attack")
    p.add_argument("--pgd-restarts", type=int, default=1, help="PGD restarts from random points")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--json", dest="json_path", default=None, help="write the results as JSON here")
    p.set_defaults(run=_run_certify, check_flags=_check_certify)


def _check_certify(args):
    """What `certify` can refuse before TensorFlow is imported."""
    from cactus_keras import validation

    validation.check_epsilon(args.epsilon, "--epsilon")
    _check_pgd(args)
    _check_limit(args.limit, "--limit")
    _check_output_file(args.json_path, "--json")


NO_DOWNLOAD_HELP = "never download the dataset (fail at once when there is no local copy)"
JSON_HELP = "write the results as JSON to this file"


def _load_model(path, flag="--model"):
    import zipfile

    import keras

    import cactus_keras  # noqa: F401  (registers CactusModel for loading)

    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag}: no model file at '{path}'. Save one with model.save('{path}').")
    if os.path.isdir(path):
        raise ValueError(
            f"{flag} '{path}' is a directory; give the model file in it, e.g. "
            f"{os.path.join(path, 'model.keras')}."
        )
    if not path.endswith(".keras"):
        raise ValueError(
            f"{flag} '{path}' is not a .keras file. Save the model with model.save('model.keras')."
        )
    if not zipfile.is_zipfile(path):
        # Keras itself reports such a file as "not found".
        raise ValueError(
            f"{flag} '{path}' is not a readable .keras file (a .keras file is a zip "
            "archive; this one is not: it is truncated, damaged or another kind of file). "
            "Save the model again with model.save()."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files.
        if "safe_mode" in str(exc):
            raise ValueError(
                f"{flag} '{path}' holds a Lambda layer (Python code), which Keras does not "
                "load from a file unless told the file is trusted; replace the Lambda layer "
                "with a built-in or registered layer and save the model again."
            ) from None
        raise ValueError(f"{flag}: could not load the model '{path}': {_one_line(exc)}") from None


def _one_line(exc):
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_output_file(path, flag):
    """A file the command will write: refused before any work if it names a folder,
    or lies in a "folder" that is a file."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} '{path}' is a directory; give a file path, e.g. "
                         f"{os.path.join(path, 'results.json')}.")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(f"{flag} '{path}': '{parent}' is a file, not a directory.")


def _check_output_dir(path, flag):
    """A folder the command will write into: refused if it (or a folder above) is a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} '{path}' is a file; give a directory (it is created if missing).")
    _check_output_file(os.path.join(path, "x"), flag)


def _check_pgd(args):
    if args.pgd_steps < 0:
        raise ValueError(f"--pgd-steps must be >= 0 (0 skips the attack), got {args.pgd_steps}.")
    if args.pgd_restarts < 1:
        raise ValueError(f"--pgd-restarts must be >= 1, got {args.pgd_restarts}.")


def _network(model):
    """The plain network of a CactusModel (what is certified and attacked), else the model."""
    import keras

    network = getattr(model, "network", None)
    return network if isinstance(network, keras.Model) else model


def _run_certify(args):
    import cactus_keras
    from cactus_keras import validation

    from cactus_keras.quiet import progress_verbosity

    start = time.perf_counter()
    _check_certify(args)
    from cactus_keras.bounds.margins import check_bound

    check_bound(args.bound)
    model = _load_model(args.model)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, args.split, args.limit)
    network = _network(model)
    kind = "CactusModel, certifying its network" if network is not model else "network"
    print(f"model {args.model} ({kind}): {network.count_params()} parameters")
    print(f"data {dataset.name} ({dataset.source}), {args.split} split, {len(x)} samples")
    print(f"bounds ({args.bound}, epsilon {args.epsilon:g}):", flush=True)
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
        print(f"PGD attack ({args.pgd_steps} steps, {args.pgd_restarts} restart(s)):", flush=True)
        attack = cactus_keras.attacks.pgd(
            network, x, y, args.epsilon, steps=args.pgd_steps, restarts=args.pgd_restarts,
            verbose=progress_verbosity(),
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


def _check_limit(limit, flag):
    if limit is not None and limit < 1:
        raise ValueError(f"{flag} must be >= 1, got {limit}.")


def _split(dataset, split, limit, flag="--limit"):
    """The images and labels of a split, cut to the first `limit` samples."""
    x, y = (dataset.x_test, dataset.y_test) if split == "test" else (dataset.x_train, dataset.y_train)
    if limit is not None:
        _check_limit(limit, flag)
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
        "DIR/network.keras, DIR/training_log.csv (with the epsilon and lambda of each "
        "epoch) and DIR/config.json. A backup at the end of each epoch lets an "
        "interrupted run continue with --resume; a DIR that holds a run is never "
        "overwritten unless --overwrite is given.",
    )
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, digits (scikit-learn's 8x8 digits), or a path (IDX directory or .npz)")
    p.add_argument("--epsilon", required=True, type=float, help="L-infinity training radius ([0, 1] images)")
    p.add_argument("--arch", default="cnn3", help="mlp, cnn3, cnn5 or cnn7")
    p.add_argument("--batch-norm", action="store_true", help="batch norm after each hidden layer")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch-size", type=int, default=128, help="samples per batch")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--lr-schedule", default="constant",
                   help="learning-rate schedule: constant, step (x --lr-decay-factor after each "
                   "of --lr-decay-epochs) or cosine")
    p.add_argument("--lr-decay-epochs", type=int, nargs="+", default=None, metavar="E",
                   help="step: decay after these many epochs, each in [1, epochs - 1] "
                   "(default: about 70%% and 85%% of --epochs)")
    p.add_argument("--lr-decay-factor", type=float, default=None,
                   help="step: the learning rate is multiplied by this, in (0, 1] (default 0.2)")
    p.add_argument("--compression", default=None,
                   help="none (plain IBP training), pruning, awp_quantization or "
                   "pruning+awp_quantization (default: pruning); "
                   "--member gives any other set")
    p.add_argument("--member", dest="members", action="append", default=None,
                   metavar="KIND:KEY=VALUE,...",
                   help="a member of the compression set with its own settings, repeatable "
                   "(replaces --compression and its flags --ratio, --pruning-method, "
                   "--bits, --awp-radius, --awp-steps): e.g. --member "
                   "pruning:ratio=0.5-0.95,pruning_method=global_l1 --member "
                   "awp_quantization:bits=4,awp_radius=0.5; KIND is pruning, awp_quantization or "
                   "another registered kind, KEY its settings (A-B is a range)")
    # None: not given, so that a flag the chosen --compression does not use is refused.
    p.add_argument("--ratio", type=float, nargs=2, default=None, metavar=("A", "B"),
                   help="pruning: pruning ratios of training are sampled from [A, B] "
                   "(default: 0.25 0.75)")
    p.add_argument("--pruning-method", default=None,
                   help="pruning: global_l1, local_l1 or global_l2_structured (default: global_l1)")
    p.add_argument("--bits", type=int, default=None,
                   help="awp_quantization: bit width the quantization member targets (default: 8)")
    p.add_argument("--awp-radius", type=float, default=None,
                   help="awp_quantization: eta, the AWP radius in quantization steps (default: 0.5)")
    p.add_argument("--awp-steps", type=int, default=None, help="awp_quantization: AWP ascent steps (default: 1)")
    p.add_argument("--standard-weight", type=float, default=0.5, help="lambda, weight of the standard loss")
    p.add_argument("--member-weight", type=float, default=1.0,
                   help="weight of each compressed member relative to the full network")
    p.add_argument("--member-weight-ramp", default="none",
                   help="none (constant --member-weight) or epsilon (the weight follows the "
                   "epsilon ramp: 0 in the warm-up)")
    p.add_argument("--member-batch-fraction", type=float, default=1.0,
                   help="in (0, 1]: each compressed member trains on its own slice of this "
                   "share of each batch (the full network on all of it)")
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
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="epochs of standard training (epsilon 0) first (default 1, or 0 with --epochs 1)")
    p.add_argument("--ramp-epochs", type=int, default=None,
                   help="epochs over which epsilon ramps to its target after the warm-up "
                   "(default: half the remaining epochs, at least 1)")
    p.add_argument("--ibp-init", action="store_true", help="IBP initialization (Shi et al. 2021)")
    p.add_argument("--ibp-regularization", type=float, default=0.0,
                   help="weight of Shi et al.'s IBP regularisers (bound tightness, ReLU "
                   "balance) during the epsilon ramp, decaying with it (Shi et al.: 0.5; 0: off)")
    p.add_argument("--l1-regularization", type=float, default=0.0,
                   help="weight of the L1 norm of the Dense and Conv kernels (CTRAIN: 1e-6; 0: off)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--validation-samples", type=int, default=1000, help="first N test samples as validation data (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization, the batch order and the ratio sampling")
    p.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    p.add_argument("--output", required=True, metavar="DIR", help="output directory")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue the run in DIR (same settings) from its last finished epoch")
    group.add_argument("--overwrite", action="store_true", help="replace the run in DIR")
    p.set_defaults(run=_run_train, check_flags=_check_train)


def _check_train(args):
    """What `train` can refuse before TensorFlow is imported (TrainConfig checks the
    rest, still before anything is written)."""
    from cactus_keras import validation

    validation.check_epsilon(args.epsilon, "--epsilon")
    _check_output_dir(args.output, "--output")
    for flag in ("--epochs", "--batch-size"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}.")
    _check_limit(args.limit, "--limit")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}.")
    if args.validation_samples < 0:
        raise ValueError(f"--validation-samples must be >= 0 (0: no validation), got "
                         f"{args.validation_samples}.")
    if args.members:
        if args.compression is not None:
            raise ValueError(
                "--compression and --member both give the compression set; use one "
                "(--member replaces --compression, e.g. --member "
                "pruning:ratio=0.5-0.95 --member awp_quantization:bits=4)."
            )
        _check_compression_flags(args, [parse_member(t) for t in args.members])
    else:
        _check_compression_flags(args, "pruning" if args.compression is None else args.compression)
    if args.resume and not _holds_run(args.output):
        raise ValueError(
            f"--resume: '{args.output}' holds no run to resume (no config.json or backup); "
            "drop --resume to start a new run there, or give the folder of the interrupted run.")


def _holds_run(output):
    # The file names of experiments.training.RUN_FILES (that module imports Keras).
    return any(os.path.exists(os.path.join(output, name))
               for name in ("config.json", "model.keras", "network.keras",
                            "training_log.csv", "backup"))


def _run_train(args):
    import cactus_keras
    from cactus_keras.experiments import TrainConfig
    from cactus_keras.experiments.training import check_data, check_existing, run_state, train
    from cactus_keras.run_lock import folder_lock

    _check_train(args)
    if args.members:
        compression = member_tables(args.members)
    else:
        compression = "pruning" if args.compression is None else args.compression
    _check_compression_flags(args, compression)
    config = TrainConfig(
        dataset=args.dataset,
        epsilon=args.epsilon,
        arch=args.arch,
        batch_norm=args.batch_norm,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        lr_decay_epochs=None if args.lr_decay_epochs is None else tuple(args.lr_decay_epochs),
        lr_decay_factor=args.lr_decay_factor,
        compression=compression,
        **{name: value for name, value in (
            ("ratio", None if args.ratio is None else tuple(args.ratio)),
            ("pruning_method", args.pruning_method), ("bits", args.bits),
            ("awp_radius", args.awp_radius), ("awp_steps", args.awp_steps),
        ) if value is not None},
        member_weight=args.member_weight,
        member_weight_ramp=args.member_weight_ramp,
        member_batch_fraction=args.member_batch_fraction,
        standard_weight=args.standard_weight,
        bound=args.bound,
        certified_loss=args.certified_loss,
        mtl_alpha=args.mtl_alpha,
        sabr_lambda=args.sabr_lambda,
        attack_steps=args.attack_steps,
        warmup_epochs=args.warmup_epochs,
        ramp_epochs=args.ramp_epochs,
        ibp_init=args.ibp_init,
        ibp_regularization=args.ibp_regularization,
        l1_regularization=args.l1_regularization,
        limit=args.limit,
        validation_samples=args.validation_samples,
        seed=args.seed,
    )
    args.interrupt_message = _train_interrupted
    data = cactus_keras.data.load(args.dataset, download=not args.no_download)
    check_data(config, data)
    # Held from the check of what DIR holds to the end: a second `train` into DIR
    # (with --resume or --overwrite too) is refused while this one writes it.
    with folder_lock(args.output, "--output", "wait for it to finish, or give another --output"):
        state = run_state(args.output)
        if not args.overwrite:
            # Refused before anything is printed or trained.
            check_existing(args.output, config, data, resume=args.resume)
        if state == "unfinished" and args.resume:
            from cactus_keras.experiments.training import resumed_epoch

            print(f"resuming {args.output} after epoch {resumed_epoch(args.output)} of {config.epochs}")
        elif state == "finished" and args.resume:
            print(f"{args.output} holds a finished run with these settings; nothing to resume")
        model = train(config, data, args.output, verbose=2, resume=args.resume,
                      overwrite=args.overwrite)
    print(f"saved {os.path.join(args.output, 'model.keras')} ({model.network.count_params()} parameters)")
    return 0


# The flags of --compression's members, and the member each configures.
_COMPRESSION_FLAGS = {vocabulary.PRUNING: ("--ratio", "--pruning-method"),
                      vocabulary.AWP_QUANTIZATION: ("--bits", "--awp-radius", "--awp-steps")}


def _check_compression_flags(args, compression):
    """A member's flag without that member in the set would be written into
    config.json as if it had been used: refused."""
    for member, flags in _COMPRESSION_FLAGS.items():
        for flag in flags:
            if getattr(args, flag[2:].replace("-", "_")) is None:
                continue
            if not isinstance(compression, str):
                raise ValueError(
                    f"{flag} does not apply with --member (each --member gives its own "
                    f"settings, e.g. {MEMBER_EXAMPLE}); drop {flag}.")
            if compression in vocabulary.TRAIN_COMPRESSIONS and member not in compression.split("+"):
                raise ValueError(
                    f"{flag} configures the {member} member, which --compression "
                    f"{compression} does not train; drop {flag}, or use --compression "
                    f"{member if compression == 'none' else vocabulary.TRAIN_COMPRESSIONS[-1]}.")


MEMBER_EXAMPLE = "--member pruning:ratio=0.5-0.95,pruning_method=global_l1"
_RANGE = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*-\s*(\d+(?:\.\d*)?|\.\d+)\s*"


def _member_value(text):
    """A --member value: true/false, none, an int, a float, a range A-B, else a string."""
    import re

    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    found = re.fullmatch(_RANGE, text)
    if found:
        return [float(found.group(1)), float(found.group(2))]
    return text.strip()


def parse_member(text):
    """The table of one `--member KIND[:KEY=VALUE,...]`, e.g.
    `pruning:ratio=0.5-0.95,pruning_method=global_l1` ->
    `{"kind": "pruning", "ratio": [0.5, 0.95], "pruning_method": "global_l1"}`."""
    kind, _, rest = text.partition(":")
    table = {"kind": kind.strip()}
    syntax = (f"--member {text!r}: expected KIND:KEY=VALUE,KEY=VALUE (a range as A-B), "
              f"e.g. {MEMBER_EXAMPLE}")
    if not table["kind"]:
        raise ValueError(f"{syntax}; the KIND is missing.")
    for item in rest.split(",") if rest.strip() else []:
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier() or not value.strip():
            raise ValueError(f"{syntax}; {item.strip()!r} is not KEY=VALUE.")
        if key in table:
            raise ValueError(f"{syntax}; {key} is given twice.")
        table[key] = _member_value(value)
    return table


def member_tables(texts):
    """The tables of the `--member` flags, checked and named as a set (every setting
    filled in). Errors name the flag: a member's settings are its KEYs, not flags."""
    import re

    from cactus_keras.compression import member_table, members_from_tables

    tables = [parse_member(t) for t in texts]
    try:
        members = members_from_tables(tables, key="--member",
                                      labels=[f"--member {t!r}" for t in texts])
    except (TypeError, ValueError) as exc:
        # Backticked names would read as flags (`bits` -> --bits): they are KEYs here.
        raise type(exc)(re.sub(r"`([\w-]+)`", r"\1", str(exc))) from None
    return [member_table(m) for m in members]


def _train_interrupted(args):
    from cactus_keras.experiments.training import resumed_epoch

    done = resumed_epoch(args.output)
    kept = (f"the backup of epoch {done} is kept in {os.path.join(args.output, 'backup')}"
            if done else "no epoch had finished, so training restarts at epoch 1")
    return f"interrupted: {kept}; resume with: {_resume_command(args)}"


def _resume_command(args):
    import shlex

    argv = [a for a in args.argv if a not in ("--resume", "--overwrite")]
    return shlex.join(["cactus-keras", *argv, "--resume"])


def _add_evaluate(subparsers):
    p = subparsers.add_parser(
        "evaluate",
        help="clean and certified accuracy under pruning and quantization",
        description="Certify a saved model (CactusModel or plain network) after pruning "
        "at each ratio with each method, and after quantizing its kernels to each bit width.",
    )
    p.add_argument("--model", required=True, help="a saved CactusModel or network (.keras)")
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, digits (scikit-learn's 8x8 digits), or a path")
    p.add_argument("--epsilon", required=True, type=float, help="certification radius ([0, 1] images)")
    p.add_argument("--ratios", default="0,0.5,0.7", help="comma-separated pruning ratios (empty for none)")
    p.add_argument("--pruning-methods", default="global_l1", help="comma-separated pruning methods")
    p.add_argument("--bits-list", default="", help="comma-separated bit widths of fake-quantized kernels, e.g. 8,4")
    p.add_argument("--bound", default="ibp", help="bound method: ibp, crown-ibp, crown, alpha-crown or best (max of ibp and alpha-crown)")
    p.add_argument("--recalibrate-batchnorm", action="store_true", help="recompute batch-norm statistics of each pruned network on 2048 training samples")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test samples")
    p.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    p.add_argument("--json", dest="json_path", default=None, help=JSON_HELP)
    p.set_defaults(run=_run_evaluate, check_flags=_check_evaluate)


def _check_evaluate(args):
    from cactus_keras import validation

    validation.check_epsilon(args.epsilon, "--epsilon")
    _check_limit(args.limit, "--limit")
    _check_output_file(args.json_path, "--json")
    _parse_list(args.ratios, float, "--ratios")
    _parse_list(args.bits_list, int, "--bits-list")


def _parse_list(text, convert, flag):
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list, got {text!r}.") from None


def _run_evaluate(args):
    import cactus_keras

    _check_evaluate(args)
    model = _load_model(args.model)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, "test", args.limit)
    table = cactus_keras.evaluate_compressed(
        model,
        x,
        y,
        args.epsilon,
        ratios=_parse_list(args.ratios, float, "--ratios"),
        pruning_method=_parse_list(args.pruning_methods, str, "--pruning-methods"),
        bits=_parse_list(args.bits_list, int, "--bits-list"),
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
    p.add_argument("--model", required=True, help="a saved CactusModel or network (.keras)")
    p.add_argument("--dataset", default=None,
                   help="calibration data: a dataset name or path (needed for tflite)")
    p.add_argument("--output", required=True, help="path of the .tflite (or .onnx) file")
    p.add_argument("--overwrite", action="store_true", help="replace the file at --output if there is one")
    p.add_argument("--format", default="tflite", choices=("tflite", "onnx"),
                   help="tflite (default) or onnx (the float network, Keras's ONNX export)")
    p.add_argument("--calibration-samples", type=int, default=None,
                   help="int8 tflite: training samples that calibrate the int8 ranges (default: 500)")
    p.add_argument("--float", dest="int8", action="store_false",
                   help="tflite: export float32 instead of int8 (no calibration)")
    p.add_argument("--epsilon", type=float, default=None,
                   help="int8 tflite: choose the file's output range by its own certificate at "
                   "this epsilon on --output-range-samples training images (a narrower range "
                   "than the calibrated one certifies more); default: the calibrated range")
    p.add_argument("--output-range-samples", type=int, default=None,
                   help="with --epsilon: the labelled training images the output range is "
                   "chosen on (default: 2000)")
    p.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    p.set_defaults(run=_run_export, check_flags=_check_export)


def _check_export(args):
    """What `export` can refuse before TensorFlow is imported."""
    unused = []
    if args.format == "onnx":
        unused = [("--dataset", args.dataset is not None), ("--float", not args.int8),
                  ("--calibration-samples", args.calibration_samples is not None),
                  ("--epsilon", args.epsilon is not None),
                  ("--output-range-samples", args.output_range_samples is not None)]
        why = "--format onnx (the float network, no calibration)"
    elif not args.int8:
        unused = [("--calibration-samples", args.calibration_samples is not None),
                  ("--epsilon", args.epsilon is not None),
                  ("--output-range-samples", args.output_range_samples is not None)]
        why = "--float (a float32 file needs no calibration)"
    elif args.epsilon is None:
        unused = [("--output-range-samples", args.output_range_samples is not None)]
        why = "the calibrated output range (give --epsilon to choose it by the certificate)"
    for flag, given in unused:
        if given:
            raise ValueError(f"{flag} does not apply to {why}; drop {flag}.")
    if args.format == "tflite" and args.int8 and args.dataset is None:
        raise ValueError("--dataset is required for an int8 --format tflite: the int8 ranges "
                         "are calibrated on its training images (e.g. --dataset fashion_mnist).")
    if args.calibration_samples is not None:
        _check_limit(args.calibration_samples, "--calibration-samples")
    if args.output_range_samples is not None:
        _check_limit(args.output_range_samples, "--output-range-samples")
    if args.epsilon is not None:
        from cactus_keras import validation

        validation.check_epsilon(args.epsilon, "--epsilon")
    _check_output_file(args.output, "--output")
    _check_no_file(args.output, "--output", args.overwrite)


def _check_no_file(path, flag, overwrite):
    if os.path.isfile(path) and not overwrite:
        raise ValueError(f"{flag} '{path}' already exists; pass --overwrite to replace it, "
                         "or give another path.")


def _run_export(args):
    import cactus_keras.export

    _check_export(args)
    if args.format == "onnx":
        return _run_export_onnx(args)
    model = _load_model(args.model)
    x, samples = None, None
    if args.int8:
        samples = 500 if args.calibration_samples is None else args.calibration_samples
        dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
        x, _ = _split(dataset, "train", samples, "--calibration-samples")
        if args.epsilon is not None:
            n = args.output_range_samples or 2000
            x_range, y_range = _split(dataset, "train", n, "--output-range-samples")
            model, scores = cactus_keras.export.certified_output_range(
                model, x_range, y_range, args.epsilon, calibration_data=x,
                input_range=dataset.input_range)
            member = cactus_keras.compression.int8_file.int8_file_member(model)
            print(f"output range: {member.output_range[0]:g} x low, {member.output_range[1]:g} "
                  f"x high of the tracked range (the file certifies "
                  f"{scores[member.output_range]:.4f} of {len(y_range)} training images at "
                  f"epsilon {args.epsilon:g}; {scores[(1.0, 1.0)]:.4f} with the whole range)")
    elif args.dataset is not None:
        print("--dataset is not used by --float (a float32 file needs no calibration)")
    path = cactus_keras.export.to_tflite(
        model, args.output, representative_data=x, int8=args.int8,
        **({} if samples is None else {"num_calibration_samples": samples}),
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
    p.add_argument("--model", required=True, help="a saved CactusModel or network (.keras)")
    p.add_argument("--dataset", required=True, help="test samples: a dataset name or path")
    p.add_argument("--epsilon", required=True, type=float,
                   help="L-infinity radius of each property ([0, 1] images)")
    p.add_argument("--samples", type=int, default=10, help="first N test samples (default 10)")
    p.add_argument("--output", required=True, metavar="DIR", help="the benchmark folder to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a benchmark in DIR (its onnx/, vnnlib/ and instances.csv are "
                   "deleted first)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per instance in instances.csv (default 300)")
    p.add_argument("--input-range", type=float, nargs=2, default=(0.0, 1.0),
                   metavar=("LOW", "HIGH"), help="data range the boxes are cut to")
    p.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    p.set_defaults(run=_run_export_vnnlib, check_flags=_check_export_vnnlib)


# What export-vnnlib writes into its folder (all of it is deleted by --overwrite).
VNNLIB_OUTPUTS = ("onnx", "vnnlib", "instances.csv")


def _check_export_vnnlib(args):
    from cactus_keras import validation

    validation.check_epsilon(args.epsilon, "--epsilon")
    if args.samples < 1:
        raise ValueError(f"--samples must be a positive number of test samples, got "
                         f"{args.samples}.")
    _check_output_dir(args.output, "--output")
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
        raise ValueError(
            f"--output '{args.output}' is not empty; pass --overwrite to replace the "
            f"benchmark in it (its {', '.join(VNNLIB_OUTPUTS)} are deleted first), or give "
            "a new or empty folder.")


def _clear_vnnlib_outputs(folder):
    """Deletes what an earlier export-vnnlib wrote into `folder` (stale properties of
    another epsilon or sample count would otherwise stay beside the new ones)."""
    from cactus_keras.atomic_write import remove_outputs

    remove_outputs(folder, VNNLIB_OUTPUTS)


def _run_export_vnnlib(args):
    import cactus_keras
    from cactus_keras.export.vnnlib import write_benchmark

    _check_export_vnnlib(args)
    model = _load_model(args.model)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, "test", args.samples)
    if args.overwrite:
        _clear_vnnlib_outputs(args.output)
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
    p.add_argument("--model", dest="path", required=True, help="the .tflite file")
    p.add_argument("--dataset", required=True, help="mnist, fashion_mnist, cifar10, digits (scikit-learn's 8x8 digits), or a path")
    p.add_argument("--epsilon", required=True, type=float, help="certification radius ([0, 1] images)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N test samples")
    p.add_argument("--kernels", default="default", help="default (XNNPACK), builtin or reference")
    p.add_argument("--rounding", default="nearest", choices=("nearest", "floor_ceil"),
                   help="the rounding model the certificate assumes: nearest (default; the "
                   "largest error of LiteRT's reference/optimized/ruy kernels, XNNPACK and "
                   "CMSIS-NN) or floor_ceil (any kernel whose error is below one unit)")
    p.add_argument("--no-download", action="store_true", help=NO_DOWNLOAD_HELP)
    p.add_argument("--json", dest="json_path", default=None, help=JSON_HELP)
    p.set_defaults(run=_run_verify_tflite, check_flags=_check_verify_tflite)


def _check_verify_tflite(args):
    from cactus_keras import validation

    validation.check_epsilon(args.epsilon, "--epsilon")
    _check_limit(args.limit, "--limit")
    _check_output_file(args.json_path, "--json")
    if not os.path.isfile(args.path):
        raise FileNotFoundError(
            f"--model: no .tflite file at '{args.path}'"
            + (" (it is a directory)" if os.path.isdir(args.path) else "")
            + "; write one with `cactus-keras export`."
        )


def _run_verify_tflite(args):
    import cactus_keras.export

    _check_verify_tflite(args)
    dataset = cactus_keras.data.load(args.dataset, download=not args.no_download)
    x, y = _split(dataset, "test", args.limit)
    result = cactus_keras.export.verify_tflite(
        args.path, x, y, args.epsilon, kernels=args.kernels, rounding=args.rounding
    )
    print(result.summary())
    _write_json(args.json_path, {"dataset": dataset.name, **result.to_dict()})
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to every option with a default worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS)
                or not action.option_strings or action.nargs == 0):
            # A switch (--float, --resume) has no value to default: "(default: True)"
            # on `--float` would read as if float were the default.
            return text
        if isinstance(default, (tuple, list)):
            default = " ".join(str(v) for v in default)
        return f"{text} (default: {default})"


def _version():
    from importlib import metadata

    from cactus_keras import __version__

    parts = []
    for name in ("keras", "tensorflow"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return f"cactus-keras {__version__}" + (f" ({', '.join(parts)})" if parts else "")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cactus-keras",
        description="Certified training that survives pruning and int8 quantization.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
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
    from cactus_keras.compress.cli import add_parser as add_compress
    from cactus_keras.compress.shrink_cli import add_parser as add_shrink

    add_experiment(subparsers)
    add_tune(subparsers)
    add_compress(subparsers)
    add_shrink(subparsers)
    _add_distribute(subparsers)
    for sub in subparsers.choices.values():
        sub.formatter_class = _HelpFormatter
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


def _quiet_tensorflow_import():
    """Imports TensorFlow (the Keras backend) with its start-up logging held back:
    `TF_CPP_MIN_LOG_LEVEL` does not cover what it prints before its logging starts.
    Lines that are not start-up noise are passed on, as is everything on failure."""
    import importlib.util

    from cactus_keras.quiet import native_stderr_filtered

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow" or "tensorflow" in sys.modules:
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    with native_stderr_filtered():
        import tensorflow  # noqa: F401


# API phrases that reach the command line, in its own words: the commands read the
# images and labels from --dataset, and write .tflite files with `export`.
_API_PHRASES = (
    (re.compile(r"`x` has (\d+) samples but `y` has (\d+) labels"),
     r"the dataset has \1 images but \2 labels"),
    (re.compile(r"`x` is empty; pass at least one sample"),
     "the split has no samples; give a dataset that has some"),
    (re.compile(r"`x` has"), "the dataset's images have"),
    (re.compile(r"`x` must"), "the dataset's images must"),
    (re.compile(r"\s*\(?(?:Reshape the data |Pass inputs shaped like the training data )?\(?for example,? add(?:ing)? a channel axis "
                r"with x\[\.\.\., None\]\)?(?: to match the model input)?\.?\)?"),
     " Give a dataset whose images have the model's input shape, or a model built for "
     "these images."),
    (re.compile(r"cactus_keras\.export\.to_tflite\(\.\.\., int8=True\)"),
     "`cactus-keras export` (without --float)"),
    (re.compile(r"\bverify_tflite\b"), "verify-tflite"),
    (re.compile(r"`x`"), "the dataset's images"),
    (re.compile(r"`y`"), "the dataset's labels"),
)


def _given_dests(parser, argv):
    """The parameters (dests) of the flags written in `argv`."""
    if parser is None:
        return set()
    words = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {action.dest for action in parser._actions
            if any(w in action.option_strings or any(o.startswith(w) and len(w) > 2
                                                    for o in action.option_strings)
                   for w in words)}


def _translate(message, parser, only=None):
    """An API message in the command's vocabulary: `name` (a parameter) becomes the
    flag that sets it (--name), `name=True` the switch, and API phrases (`x`,
    `to_tflite(..., int8=True)`) the command's words. `only`: the parameters to
    translate (default all)."""
    for pattern, replacement in _API_PHRASES:
        message = pattern.sub(replacement, message)
    if parser is None:
        return message
    for action in parser._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if not flags or (only is not None and action.dest not in only):
            continue
        flag = flags[0]
        message = message.replace(f"`{action.dest}=True`", flag)
        message = message.replace(f"`{action.dest}`", flag)
    return message


def main(argv=None):
    # TensorFlow's start-up logging drowns the command's own output; it must be set
    # before TensorFlow is imported, which happens only once a command runs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:  # argparse keeps the subcommands' parsers in private attributes
        command_parser = parser._subparsers._group_actions[0].choices.get(args.command)
    except AttributeError:
        command_parser = None
    prefix = f"cactus-keras {args.command}"
    try:
        # A bad flag value is answered at once: TensorFlow takes seconds to import.
        check = getattr(args, "check_flags", None)
        if check is not None:
            check(args)
        _quiet_tensorflow_import()
        with _distributed(args):
            return args.run(args)
    except KeyboardInterrupt:
        message = getattr(args, "interrupt_message", None)
        text = message(args) if callable(message) else "interrupted"
        print(f"\n{prefix}: {text}", file=sys.stderr)
        return 130
    except ImportError as exc:
        # An optional part (TFLite, TF-MOT, TFDS, KerasTuner) without its extra names it.
        from cactus_keras import extras

        message = extras.message_for(exc) if isinstance(exc, ModuleNotFoundError) else None
        if message is None:
            message = (f"{_one_line(exc)} (a dependency is missing: reinstall "
                       "cactus-keras, e.g. pip install cactus-keras)")
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename:
            text = f"{exc.strerror or exc}: '{exc.filename}'"
        else:
            text = str(exc)
        from cactus_keras.experiments.errors import ConfigError

        # A config's errors name its TOML keys (`seeds`): flags only where one was given
        # (then the key's value is the flag's).
        given = _given_dests(command_parser, argv) if isinstance(exc, ConfigError) else None
        text = _translate(text, command_parser, given)
        print(f"{prefix}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
