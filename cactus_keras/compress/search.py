"""The certificate-constrained compression search.

Question it answers: what is the smallest (or fastest) int8 file of this network whose
own integer certificate stays at or above a floor?

Candidates are per-layer structured pruning ratios of the hidden Dense/Conv layers.
Each is pruned (`prune_structured`), rebuilt narrower (`shrink`, exact) and screened
by its float IBP certificate on a validation split taken from the training data
(cheap); the candidates that pass the screen (those whose float certificate meets the
floor first, then those within the slack, cheapest first), and the unpruned network, are
exported to int8 files and certified exactly (`verify_tflite`, the file's integer
certificate) and timed; the chosen file is the cheapest whose file certificate meets
the floor. The test set is read once, for the chosen file's final report. The cost is
fixed before any work: `max_candidates` float IBP certificates on
`validation_samples` images, and at most `finalists + 1` exports, file certificates and
latency measurements. Unstructured zeros are not searched: an int8 file stores its
kernels dense, so they change neither its size nor its speed.

With `finetune_epochs` N > 0, each pruned finalist is fine-tuned after shrinking, before
its file is exported: N epochs of certified training (`CactusModel` of the narrower
network at `epsilon`, the full network only, no members) on the training data minus
the validation split, seeded, so a rerun fine-tunes to the same weights. No member,
not even the int8 file member: the narrower network is already the pruned one, so what
the fine-tune recovers is the certificate pruning took; the int8 file member costs
about 2.4x an IBP step and moved the file certificate of a network trained with its
full network by +0.15 points only (results/int8_file_finetune); and a memberless loss
fine-tunes any network `shrink` builds, where the member supports chains only. The
unpruned network is the reference and is not fine-tuned. Each fine-tuned network is
saved (DIR/files/candidate_NNN.keras), so a resumed search does not train it again.

```python
from cactus_keras.compress import SearchConfig, run_search
report = run_search(network, x_train, y_train, SearchConfig(epsilon=0.1, min_certified=0.6),
                "runs/compress", load_test=lambda: (x_test, y_test))
report["chosen"]["bytes"], report["chosen"]["test_certified_accuracy"]
```
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil

import keras
import numpy as np

from cactus_keras.atomic_write import write_text as atomic_write_text
from cactus_keras.certification import certify
from cactus_keras.compress.latency import file_size, measure_latency
from cactus_keras.compression import prune_structured, shrink
from cactus_keras.compression.kernels import AFFINE_KERNEL_LAYERS, compressible_kernels
from cactus_keras.export import certified_output_range, to_tflite, verify_tflite
from cactus_keras.int8.rounding import DEFAULT_ROUNDING, check_rounding

OBJECTIVES = ("size", "latency")
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875)


class NoCandidateMeetsFloor(RuntimeError):
    """No certified candidate's file certificate reaches the floor on validation."""


@dataclasses.dataclass
class SearchConfig:
    """What the search looks for and what it may spend.

    Args:
        epsilon: L-infinity radius of the certificates.
        min_certified: the floor: the file's certified accuracy on validation.
        objective: "size" (bytes of the int8 file) or "latency" (batch-1 LiteRT median).
        ratios: structured ratios tried per hidden layer.
        max_candidates: screened candidates at most (the grid, sampled when larger;
            uniform ratios always in).
        finalists: int8 files certified at most (besides the unpruned one).
        screen_slack: a candidate passes the screen when its float IBP certificate is
            at least `min_certified - screen_slack` (the int8 certificate can differ).
        validation_samples: the last N training samples, held out for the search.
        calibration_samples: the first N training samples calibrate the int8 export.
        latency_runs: timed invokes per file.
        seed: sampling of the candidate grid.
        rounding: the rounding model every file certificate assumes
            (`cactus_keras.int8.rounding`; default "nearest").
        output_range: "certified" (default): each file's output range is the one its
            own certificate chooses on `output_range_samples` training images outside
            the validation split (`cactus_keras.export.certified_output_range`);
            "minmax": TFLite's calibrated range.
        output_range_samples: how many.
        finetune_epochs: epochs of certified fine-tuning of each pruned finalist after
            shrinking, before its export (default 0: none).
        finetune_learning_rate: Adam's learning rate of that fine-tune (default 1e-5).
        finetune_standard_weight: lambda of that fine-tune's loss (default 0.5).
        finetune_batch_size: its batch size (default 128).

    Example:

    ```python
    from cactus_keras.compress import SearchConfig

    config = SearchConfig(epsilon=0.1, min_certified=0.6, objective="latency",
                          ratios=(0.0, 0.5, 0.75), finalists=4)
    print(config.to_dict())
    ```
    """

    epsilon: float
    min_certified: float
    objective: str = "size"
    ratios: tuple = DEFAULT_RATIOS
    max_candidates: int = 48
    finalists: int = 8
    screen_slack: float = 0.02
    validation_samples: int = 1000
    calibration_samples: int = 200
    latency_runs: int = 300
    seed: int = 0
    rounding: str = DEFAULT_ROUNDING
    output_range: str = "certified"
    output_range_samples: int = 2000
    finetune_epochs: int = 0
    finetune_learning_rate: float = 1e-5
    finetune_standard_weight: float = 0.5
    finetune_batch_size: int = 128

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        if not 0.0 <= self.min_certified <= 1.0:
            raise ValueError(f"`min_certified` must be a fraction in [0, 1], got {self.min_certified}.")
        if not self.ratios or any(not 0.0 <= r < 1.0 for r in self.ratios):
            raise ValueError(f"`ratios` must be fractions in [0, 1), got {self.ratios}.")
        if self.max_candidates < 1 or self.finalists < 1:
            raise ValueError("`max_candidates` and `finalists` must be >= 1.")
        if isinstance(self.finetune_epochs, bool) or int(self.finetune_epochs) != self.finetune_epochs \
                or self.finetune_epochs < 0:
            raise ValueError(f"`finetune_epochs` must be an integer >= 0 (0: no fine-tune), got "
                             f"{self.finetune_epochs!r}.")
        if not self.finetune_learning_rate > 0:
            raise ValueError(f"`finetune_learning_rate` must be > 0, got {self.finetune_learning_rate!r}.")
        if not 0.0 <= self.finetune_standard_weight <= 1.0:
            raise ValueError(f"`finetune_standard_weight` (lambda) must be in [0, 1], got "
                             f"{self.finetune_standard_weight!r}.")
        if self.finetune_batch_size < 1:
            raise ValueError(f"`finetune_batch_size` must be >= 1, got {self.finetune_batch_size!r}.")
        self.finetune_epochs = int(self.finetune_epochs)
        self.ratios = tuple(sorted({float(r) for r in self.ratios}))
        self.rounding = check_rounding(self.rounding)
        if self.output_range not in ("certified", "minmax"):
            raise ValueError(f"`output_range` must be certified or minmax, got {self.output_range!r}.")
        if self.output_range_samples < 1:
            raise ValueError(f"`output_range_samples` must be >= 1, got {self.output_range_samples!r}.")

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["ratios"] = list(self.ratios)
        return out


def hidden_layers(network):
    """Names of the hidden Dense/Conv layers (the output layer is never pruned)."""
    kernels = {id(k) for k in compressible_kernels(network, exclude_output=True)}
    return [l.name for l in network.layers if isinstance(l, AFFINE_KERNEL_LAYERS) and id(l.kernel) in kernels]


def candidates(layer_names, config):
    """Per-layer ratio dicts: the whole grid, or uniform ratios plus a seeded sample."""
    grid = list(itertools.product(config.ratios, repeat=len(layer_names)))
    if len(grid) > config.max_candidates:
        uniform = [tuple([r] * len(layer_names)) for r in config.ratios]
        rest = [g for g in grid if g not in uniform]
        rng = np.random.default_rng(config.seed)
        count = max(config.max_candidates - len(uniform), 0)
        picked = [rest[i] for i in sorted(rng.choice(len(rest), count, replace=False))]
        grid = (uniform + picked)[: config.max_candidates]
    return [dict(zip(layer_names, ratios)) for ratios in grid]


def _finalist_order(row, floor, proxy):
    """Candidates whose float certificate meets the floor first, then those within the
    screen's slack, each group cheapest first: an int8 file certifies about what its
    float network does (a point below, or a little above), so the cheapest candidates
    just inside the slack rarely make a file that meets the floor, and filling the
    finalists with them can leave out the file that does."""
    return (row["float_certified_accuracy"] < floor, row[proxy])


def _key(ratios):
    return ",".join(f"{name}={value:g}" for name, value in ratios.items())


def _macs(network):
    """Multiply-accumulates of one inference through the Dense/Conv layers."""
    total = 0
    for layer in network.layers:
        if isinstance(layer, AFFINE_KERNEL_LAYERS):
            out = layer.output.shape
            positions = int(np.prod(out[1:-1])) if len(out) > 2 else 1
            total += positions * int(np.prod(layer.kernel.shape))
    return total


class _Records:
    """DIR/candidates.jsonl: one line per finished step, so a second call resumes."""

    def __init__(self, path):
        self.path = path
        self.rows = {}
        if os.path.exists(path):
            with open(path) as handle:
                for line in handle:
                    if line.strip():
                        row = json.loads(line)
                        self.rows.setdefault(row["key"], {}).update(row)

    def add(self, row):
        self.rows.setdefault(row["key"], {}).update(row)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def _check_config(output, config, network):
    path = os.path.join(output, "search_config.json")
    wanted = {**config.to_dict(), "network": network.name}
    if os.path.exists(path):
        with open(path) as handle:
            found = json.load(handle)
        # A search written before the fine-tune existed fine-tuned nothing: it resumes
        # as one with the fine-tune's defaults (any other key missing is a difference).
        for field in dataclasses.fields(SearchConfig):
            if field.name.startswith("finetune_"):
                found.setdefault(field.name, field.default)
        # ... and one written before the certified output range exported TFLite's range.
        if "output_range" not in found:
            found.update(output_range="minmax", output_range_samples=config.output_range_samples)
        if found != wanted:
            raise ValueError(
                f"{output} holds a search with another configuration ({path}); resume it "
                "with the same options, or give a new --output folder."
            )
    else:
        atomic_write_text(path, json.dumps(wanted, indent=2))


def cost_statement(count, config, training_samples=None):
    text = (f"{count} candidates screened by float IBP on {config.validation_samples} validation "
            f"images; at most {config.finalists + 1} int8 exports, file certificates and "
            f"latency measurements ({config.latency_runs} invokes each)")
    if config.finetune_epochs:
        images = "" if training_samples is None else f" of {training_samples} training images"
        text += (f"; at most {config.finalists} fine-tunes of {config.finetune_epochs} "
                 f"epoch{'s' if config.finetune_epochs > 1 else ''}{images} (certified IBP "
                 f"training, batch {config.finetune_batch_size}), each with its float IBP "
                 "certificate")
    return text


def finetune(network, x, y, config):
    """`network` fine-tuned in place with certified training (the full network, no members).

    `config.finetune_epochs` epochs of `CactusModel(network, config.epsilon)` with lambda
    `config.finetune_standard_weight` and Adam at `config.finetune_learning_rate`, seeded
    with `config.seed` (the same data and seed give the same weights). Returns the
    final epoch's training loss.
    """
    from cactus_keras.training import CactusModel

    keras.utils.set_random_seed(config.seed)
    model = CactusModel(network, epsilon=config.epsilon, compression=[],
                        standard_weight=config.finetune_standard_weight,
                        include_full_network=True, seed=config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.finetune_learning_rate))
    history = model.fit(x, y, epochs=config.finetune_epochs, batch_size=config.finetune_batch_size,
                        shuffle=True, verbose=0)
    return float(history.history["loss"][-1])


def pareto_front(rows, cost):
    """The rows no other row beats on both `cost` (lower) and certified accuracy (higher)."""
    front = []
    for row in rows:
        dominated = any(
            other[cost] <= row[cost] and other["certified_accuracy"] >= row["certified_accuracy"]
            and (other[cost] < row[cost] or other["certified_accuracy"] > row["certified_accuracy"])
            for other in rows
        )
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: r[cost])


def run_search(network, x_train, y_train, config, output, *, load_test, verbose=1):
    """Runs the search; writes DIR/chosen.int8.tflite, report.json, pareto.json, pareto.png.

    `x_train`, `y_train`: the training data; the search holds out its last
    `validation_samples` for every certificate it decides by, and calibrates the int8
    export on its first `calibration_samples`. `load_test()` returns (x_test, y_test)
    and is called once, after the file is chosen, for the final report. Calling it again
    with the same `output` resumes (finished steps are read from DIR/candidates.jsonl).
    Raises `NoCandidateMeetsFloor` (after writing pareto.json) when no certified file
    reaches `min_certified`. With `config.finetune_epochs` > 0 each pruned finalist is
    fine-tuned (`finetune`) on the training data minus the validation split before its
    export; its row records the fine-tune's loss and float IBP certificate.

    Example (a tiny search; `cactus-keras compress` is the same from the command line):

    ```python
    from cactus_keras.compress import SearchConfig, run_search

    config = SearchConfig(epsilon=0.001, min_certified=0.0, ratios=(0.0, 0.5),
                          max_candidates=2, finalists=1, validation_samples=64,
                          calibration_samples=32, latency_runs=5)
    report = run_search(net, x_train, y_train, config, str(tmp_path / "search"),
                        load_test=lambda: (x_test, y_test), verbose=0)
    print(report["chosen"])
    ```
    """
    os.makedirs(output, exist_ok=True)
    _check_config(output, config, network)
    count = len(x_train)
    if count < config.validation_samples + config.calibration_samples:
        raise ValueError(
            f"The search needs {config.validation_samples} validation and "
            f"{config.calibration_samples} calibration samples from the training data, "
            f"got {count} training samples; lower --validation-samples."
        )
    x_val, y_val = x_train[-config.validation_samples:], y_train[-config.validation_samples:]
    x_cal = x_train[: config.calibration_samples]
    # The fine-tune never sees the validation split the decisions are made on.
    x_fit, y_fit = x_train[: -config.validation_samples], y_train[: -config.validation_samples]
    records = _Records(os.path.join(output, "candidates.jsonl"))
    names = hidden_layers(network)
    grid = candidates(names, config)
    if verbose:
        print(f"compress: {len(names)} hidden layers ({', '.join(names)}); "
              + cost_statement(len(grid), config, len(x_fit)))

    networks = {}

    def build(ratios):
        key = _key(ratios)
        if key not in networks:
            networks[key] = shrink(prune_structured(network, ratios, per_layer=True)) if any(
                ratios.values()) else network
        return networks[key]

    # 1. Screening: float IBP certificate of every candidate on validation (cheap).
    bar = keras.utils.Progbar(len(grid), unit_name="candidate") if verbose else None
    for i, ratios in enumerate(grid):
        key = _key(ratios)
        if "float_certified_accuracy" not in records.rows.get(key, {}):
            small = build(ratios)
            cert = certify(small, x_val, y_val, config.epsilon, bound="ibp", verbose=0)
            records.add({"key": key, "ratios": ratios, "parameters": int(small.count_params()),
                         "macs": _macs(small),
                         "float_certified_accuracy": float(cert.certified_accuracy)})
        if bar:
            bar.update(i + 1)
    rows = [records.rows[_key(r)] for r in grid]
    proxy = "parameters" if config.objective == "size" else "macs"
    floor = config.min_certified - config.screen_slack
    passed = sorted((r for r in rows if r["float_certified_accuracy"] >= floor),
                    key=lambda r: _finalist_order(r, config.min_certified, proxy))
    unpruned = _key({n: 0.0 for n in names})
    finalists = [r["key"] for r in passed[: config.finalists]]
    if unpruned not in finalists:
        finalists.append(unpruned)
    by_key = {_key(r): r for r in grid}

    # 2. Finalists: export to int8, the file's own certificate on validation, size, latency.
    if verbose:
        print(f"compress: {len(passed)} of {len(grid)} candidates pass the float IBP screen "
              f"(>= {floor:.4f}); certifying {len(finalists)} int8 files")
    bar = keras.utils.Progbar(len(finalists), unit_name="file") if verbose else None
    files = os.path.join(output, "files")
    os.makedirs(files, exist_ok=True)
    for i, key in enumerate(finalists):
        row = records.rows[key]
        path = os.path.join(files, f"candidate_{grid.index(by_key[key]):03d}.int8.tflite")
        if "certified_accuracy" not in row or not os.path.exists(path):
            if config.finetune_epochs and key != unpruned:
                small = _finetuned(network, by_key[key], path[: -len(".int8.tflite")] + ".keras",
                                   x_fit, y_fit, x_val, y_val, config, records, key)
            else:
                small = build(by_key[key])
            if config.output_range == "certified":
                # Chosen on the training images the decisions never look at.
                n = config.output_range_samples
                small, _ = certified_output_range(small, x_fit[:n], y_fit[:n], config.epsilon,
                                                  calibration_data=x_cal,
                                                  rounding=config.rounding)
            to_tflite(small, path, x_cal)
            result = verify_tflite(path, x_val, y_val, config.epsilon, rounding=config.rounding,
                                   verbose=0)
            latency = measure_latency(path, config.latency_runs)
            records.add({"key": key, "file": os.path.relpath(path, output), "bytes": file_size(path),
                         "latency_ms": latency["median_ms"],
                         "certified_accuracy": float(result.certified_accuracy),
                         "clean_accuracy": float(result.clean_accuracy)})
        if bar:
            bar.update(i + 1)

    certified = [dict(records.rows[k]) for k in finalists]
    count_finetuned = sum(1 for r in certified if "finetune_loss" in r)
    cost = "bytes" if config.objective == "size" else "latency_ms"
    for cost_name in ("bytes", "latency_ms"):
        keys = {r["key"] for r in pareto_front(certified, cost_name)}
        for r in certified:
            r[f"pareto_{cost_name}"] = r["key"] in keys
    meeting = sorted((r for r in certified if r["certified_accuracy"] >= config.min_certified),
                     key=lambda r: (r[cost], -r["certified_accuracy"]))
    front = {"objective": config.objective, "min_certified": config.min_certified,
             "epsilon": config.epsilon, "split": f"validation: last {config.validation_samples} training samples",
             "cost": cost_statement(len(grid), config, len(x_fit)),
             "finetuned": count_finetuned,
             "screened": rows, "certified": certified}
    atomic_write_text(os.path.join(output, "pareto.json"), json.dumps(front, indent=2))
    plot_front(certified, config, os.path.join(output, "pareto.png"))
    if not meeting:
        best = max(certified, key=lambda r: r["certified_accuracy"])
        raise NoCandidateMeetsFloor(
            f"No int8 file meets --min-certified {config.min_certified:.4f} on validation: "
            f"the best file certificate is {best['certified_accuracy']:.4f} ({best['key']}"
            f"{', unpruned' if best['key'] == unpruned else ''}). Lower the floor, "
            f"{'' if config.finetune_epochs else 'fine-tune the pruned finalists (--finetune-epochs), '}"
            f"or train the network to be certified under compression (see {output}/pareto.json)."
        )
    chosen = meeting[0]
    chosen_path = os.path.join(output, "chosen.int8.tflite")
    shutil.copyfile(os.path.join(output, chosen["file"]), chosen_path)

    # 3. The final report: the test set is read here, once, for the chosen file only.
    x_test, y_test = load_test()
    test = verify_tflite(chosen_path, x_test, y_test, config.epsilon, rounding=config.rounding,
                         verbose=0)
    base = records.rows[unpruned]
    report = {
        "chosen": {**{k: chosen[k] for k in ("key", "ratios", "parameters", "bytes", "latency_ms")},
                   **{k: chosen[k] for k in ("finetune_loss", "finetuned_float_certified_accuracy")
                      if k in chosen},
                   "validation_certified_accuracy": chosen["certified_accuracy"],
                   "test_certified_accuracy": float(test.certified_accuracy),
                   "test_clean_accuracy": float(test.clean_accuracy),
                   "test_samples": int(len(y_test)),
                   "rounding": config.rounding,
                   "file": "chosen.int8.tflite"},
        "unpruned": {"bytes": base["bytes"], "latency_ms": base["latency_ms"],
                     "validation_certified_accuracy": base["certified_accuracy"]},
        "size_reduction": base["bytes"] / chosen["bytes"],
        "speedup": base["latency_ms"] / chosen["latency_ms"],
        "config": config.to_dict(),
    }
    atomic_write_text(os.path.join(output, "report.json"), json.dumps(report, indent=2))
    if verbose:
        plural = "s" if config.finetune_epochs > 1 else ""
        tuned = f" (fine-tuned {config.finetune_epochs} epoch{plural})" if "finetune_loss" in chosen else ""
        print(f"compress: chosen {chosen['key']}{tuned}: {chosen['bytes']} bytes "
              f"({report['size_reduction']:.2f}x smaller), {chosen['latency_ms']:.4f} ms "
              f"({report['speedup']:.2f}x faster); file certified accuracy "
              f"{chosen['certified_accuracy']:.4f} on validation, "
              f"{report['chosen']['test_certified_accuracy']:.4f} on {len(y_test)} test samples")
    return report


def _finetuned(network, ratios, path, x_fit, y_fit, x_val, y_val, config, records, key):
    """The shrunk candidate fine-tuned, or read back from `path` when a run before did it."""
    if os.path.exists(path) and "finetune_loss" in records.rows.get(key, {}):
        return keras.saving.load_model(path, compile=False)
    # A fresh copy: the screened network (cached) keeps the weights it was screened with.
    small = shrink(prune_structured(network, ratios, per_layer=True))
    loss = finetune(small, x_fit, y_fit, config)
    cert = certify(small, x_val, y_val, config.epsilon, bound="ibp", verbose=0)
    folder = os.path.dirname(path)
    temporary = os.path.join(folder, f".finetune{os.getpid()}.keras")
    small.save(temporary)
    os.replace(temporary, path)
    records.add({"key": key, "finetune_loss": loss, "finetune_epochs": config.finetune_epochs,
                 "finetuned_float_certified_accuracy": float(cert.certified_accuracy),
                 "finetuned_network": os.path.relpath(path, os.path.dirname(records.path))})
    return small


def plot_front(rows, config, path):
    """Size and latency of every certified file against its certified accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, cost, label in ((axes[0], "bytes", "int8 file size (KiB)"),
                            (axes[1], "latency_ms", "LiteRT latency, batch 1 (ms)")):
        scale = 1024.0 if cost == "bytes" else 1.0
        xs = [r[cost] / scale for r in rows]
        ys = [r["certified_accuracy"] for r in rows]
        ax.scatter(xs, ys, s=18, alpha=0.6, label="certified files")
        front = pareto_front(rows, cost)
        ax.plot([r[cost] / scale for r in front], [r["certified_accuracy"] for r in front],
                "-o", color="C3", label="Pareto front")
        ax.axhline(config.min_certified, color="gray", linestyle="--", label="floor")
        ax.set_xlabel(label)
        ax.set_ylabel("file certified accuracy (validation)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"int8 files, epsilon {config.epsilon:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
