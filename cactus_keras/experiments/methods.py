"""The methods an experiment compares: CACTUS and the baselines, one class each.

Every method turns (data, seed, the networks of its source runs) into result rows: one
row per compression level it was evaluated at, with clean and certified accuracy.

- `cactus`: CACTUS training (`CactusModel` with pruning and/or quantization members),
  then the whole evaluation grid.
- `ibp-then-compress`: plain IBP certified training, then the grid: pruning and
  quantization applied with no fine-tuning.
- `ibp-then-finetune`: a source run's network compressed once, then certified
  fine-tuning of the compressed network alone: a `CactusModel` with
  `include_full_network=False` and one member, `FixedMaskPruning` (fixed mask) or
  `StraightThroughQuantization` (fake quantization, straight-through estimator).
- `ibp-then-int8-finetune`: a source run's network fine-tuned with the `int8_file`
  member alone (the QA-IBP-style baseline); only its int8 file is reported.
- `tfmot`: TensorFlow Model Optimization's compressors on a source run's network,
  through a `tf_keras` twin (`prune_low_magnitude` + fine-tuning + `strip_pruning`;
  `quantize_model` QAT + int8 conversion), certified by our bounds. Applied to a CACTUS
  run it checks that the certificate survives a compressor we did not write.

Options of each method are its class's `options` (name -> default, None meaning "the
experiment's value"); an unknown option is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np

from cactus_keras import atomic_write, backend, validation
from cactus_keras.experiments.errors import ConfigError
from cactus_keras.experiments.evaluation import Level, check_bits_list, parse_pruning
from cactus_keras.experiments.training import TRAIN_FIELDS
from cactus_keras.int8.rounding import DEFAULT_ROUNDING

COMPRESSED_FORMS = ("prune", "quantize", "tflite")


@dataclasses.dataclass
class RunContext:
    """What a method's `run` gets: the experiment, the data, the seed and folders."""

    config: object
    data: object
    x_test: np.ndarray
    y_test: np.ndarray
    seed: int
    directory: str
    source_directories: dict
    verbose: int = 2
    log: object = print

    @property
    def input_range(self):
        """The data's valid range, which every certificate cuts the epsilon ball to."""
        return self.data.input_range

    @property
    def x_train(self):
        return self.data.x_train

    @property
    def y_train(self):
        return self.data.y_train

    def cached(self, key, compute):
        """`compute()` (a JSON-able value), or its saved value if this run already
        computed it: an interrupted run resumes at the step it was in."""
        path = os.path.join(self.directory, "steps", f"{key}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        value = compute()
        atomic_write.write_json(path, value)
        return value

    def source_network(self, run_name):
        path = os.path.join(self.source_directories[run_name], "network.keras")
        return keras.saving.load_model(path, compile=False)


def row(form, *, ratio=None, bits=None, sparsity=0.0, clean_accuracy, certified_accuracy,
        samples, pruning_method=None, **extra):
    """One result row. `form` is "prune" (ratio; ratio 0 is the uncompressed network),
    "quantize" (fake-quantized kernels, `bits`) or "tflite" (the int8 file)."""
    assert form in COMPRESSED_FORMS
    return {
        "form": form,
        "pruning_method": pruning_method if form in ("prune", "tflite") else None,
        "ratio": ratio,
        "bits": bits,
        "sparsity": float(sparsity),
        "clean_accuracy": float(clean_accuracy),
        "certified_accuracy": float(certified_accuracy),
        "samples": int(samples),
        **extra,
    }


# ----- evaluation steps shared by the methods -----

def grid_rows(network, ctx, pruning, bits, uncompressed=True):
    """Rows of `evaluate_compressed`: the uncompressed network (ratio 0, no pruning
    method; unless `uncompressed=False`), each pruning method of `pruning` (method ->
    ratios) at its ratios, then each bit width of `bits`."""
    from cactus_keras.certification.compressed import evaluate_compressed

    evaluation = ctx.config.evaluation
    n = evaluation.get("bound_samples") or len(ctx.x_test)

    def evaluate(ratios, method="global_l1", widths=()):
        return evaluate_compressed(
            network, ctx.x_test[:n], ctx.y_test[:n], ctx.config.epsilon, ratios=ratios,
            pruning_method=method, bits=widths, bound=evaluation["bound"],
            input_range=ctx.input_range).rows

    found = evaluate([0.0]) if uncompressed else []
    for method, ratios in pruning.items():
        if ratios:
            found += evaluate(ratios, method)
    if bits:
        found += evaluate([], widths=bits)
    rows = []
    for r in found:
        common = dict(sparsity=r["sparsity"], clean_accuracy=r["clean_accuracy"],
                      certified_accuracy=r["certified_accuracy"], samples=r["samples"])
        if r["form"] == "prune":
            # Ratio 0 is no pruning at all, whatever method evaluated it.
            method = r["pruning_method"] if r["ratio"] > 0 else None
            rows.append(row("prune", ratio=r["ratio"], pruning_method=method, **common))
        else:
            rows.append(row("quantize", bits=r["bits"], **common))
    return rows


def tflite_rows(path, ctx, pruning_method=None, ratio=None):
    """The rows of an int8 `.tflite` file, certified on its own integer arithmetic
    under each rounding model of the grid (`tflite_roundings`); `pruning_method` and
    `ratio` say which pruned network the file is of (None: the network itself)."""
    from cactus_keras.export import verify_tflite

    rows = []
    for rounding in ctx.config.evaluation.get("tflite_roundings", ["nearest"]):
        result = verify_tflite(path, ctx.x_test, ctx.y_test, ctx.config.epsilon,
                               input_range=ctx.input_range, rounding=rounding)
        rows.append(row("tflite", bits=8, ratio=ratio, pruning_method=pruning_method,
                        clean_accuracy=result.clean_accuracy,
                        certified_accuracy=result.certified_accuracy,
                        samples=len(result.labels),
                        simulation_agreement=result.simulation_agreement,
                        rounding=result.rounding, file=os.path.relpath(path, ctx.directory)))
    return rows


def export_rows(network, ctx, name, pruning_method=None, ratio=None):
    """Exports `network` (or a `CactusModel`, whose int8_file member's ranges the file
    gets) to DIR/<name>.int8.tflite with our exporter and certifies it (`tflite_rows`).
    With [evaluation] tflite_output_range = "certified" the file's output range is the
    one its certificate chooses on training images (`certified_output_range`)."""
    from cactus_keras.export import certified_output_range, to_tflite
    from cactus_keras.compression.int8_file import int8_file_member

    evaluation = ctx.config.evaluation
    path = os.path.join(ctx.directory, f"{name}.int8.tflite")
    samples = evaluation["calibration_samples"]
    extra = {"output_range": evaluation["tflite_output_range"]}
    if evaluation["tflite_output_range"] == "certified":
        n = evaluation["output_range_samples"]
        network, _ = certified_output_range(
            network, ctx.x_train[:n], ctx.y_train[:n], ctx.config.epsilon,
            calibration_data=ctx.x_train[:samples], input_range=ctx.input_range)
        extra["output_range_factors"] = list(int8_file_member(network).output_range)
    to_tflite(network, path, representative_data=ctx.x_train[:samples],
              num_calibration_samples=samples)
    return [{**r, **extra} for r in tflite_rows(path, ctx, pruning_method, ratio)]


def pruned_copy(network, pruning_method, ratio):
    """A clone of `network` with its kernels magnitude-pruned at `ratio` (the grid's
    pruning: the output layer left out where the method leaves it out)."""
    from cactus_keras.compression.kernels import compressible_kernels
    from cactus_keras.compression.masks import magnitude_masks, output_is_excluded

    copy = keras.models.clone_model(network)
    copy.set_weights(network.get_weights())
    index = {id(v): i for i, v in enumerate(network.weights)}
    kernels = compressible_kernels(network, output_is_excluded(pruning_method, False))
    masks = magnitude_masks([k.value for k in kernels], ratio, pruning_method)
    for kernel, mask in zip(kernels, masks):
        copy.weights[index[id(kernel)]].assign(kernel.value * mask)
    return copy


def int8_file_source(ctx, network):
    """The trained `CactusModel` when its set has an int8_file member (its file gets
    the ranges the member trained for), else `network`."""
    path = os.path.join(ctx.directory, "model.keras")
    try:
        with open(os.path.join(ctx.directory, "config.json")) as f:
            compression = json.load(f).get("compression")
    except FileNotFoundError:
        return network
    if not (isinstance(compression, list)
            and any(isinstance(t, dict) and t.get("kind") == "int8_file" for t in compression)):
        return network
    if not os.path.exists(path):
        # Calibrated ranges would silently export another network than the one trained.
        raise FileNotFoundError(
            f"{path} is missing: the run trained an int8_file member, whose activation "
            "ranges its file must get; restore it, or delete the run's folder to train again.")
    return keras.saving.load_model(path, compile=False)


def file_rows(network, ctx):
    """The int8 file rows of a trained network: its own file, then the files of its
    pruned networks (`tflite_prune`)."""
    rows = ctx.cached("tflite_files", lambda: export_rows(int8_file_source(ctx, network),
                                                           ctx, "network"))
    for method, ratios in ctx.config.evaluation.get("tflite_prune", {}).items():
        for ratio in ratios:
            rows = rows + ctx.cached(
                f"tflite_{method}_{ratio:g}",
                lambda method=method, ratio=ratio: export_rows(
                    pruned_copy(network, method, ratio), ctx, f"network_{method}_{ratio:g}",
                    method, ratio))
    return rows


def _tflite_modules(key="[evaluation] tflite"):
    what = f"{key} = true (the int8 .tflite export and its verification)"
    return [("tensorflow", what), ("ai_edge_litert", what)]


# ----- the methods -----

class Method:
    """Base class. Subclasses set `name`, `options` and define `run(ctx)`."""

    name = ""
    options = {}
    produces_network = False

    def __init__(self, run_name, options, config, where):
        self.run_name = run_name
        self.config = config
        self.where = where
        unknown = sorted(set(options) - set(self.options) - {"method"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown option(s) {', '.join(unknown)} for method {self.name!r}; "
                f"its options are {', '.join(sorted(self.options)) or 'none'}."
            )
        self.settings = {k: options.get(k, default) for k, default in self.options.items()}
        self.check()

    def check(self):
        """Validates `self.settings`; raise ConfigError."""

    def sources(self):
        return []

    def requires(self):
        """`(module, what needs it)` of the optional modules this run will import."""
        return []

    def spec(self):
        """Everything that defines this run's results (saved; a change forces a rerun)."""
        return {"method": self.name, **self.settings, "evaluation": self.evaluation_spec()}

    def evaluation_spec(self):
        return dict(self.config.evaluation)

    def describe(self):
        """The options this run sets itself (for the report)."""
        return {k: v for k, v in self.settings.items() if v is not None}

    def run(self, ctx):
        raise NotImplementedError


class TrainedMethod(Method):
    """A method that trains a network from scratch with a `TrainConfig`, then evaluates
    it over the whole grid (pruning ratios, bit widths, the exported int8 file)."""

    options = {field: None for field in TRAIN_FIELDS}
    produces_network = True

    def overrides(self):
        return {k: v for k, v in self.settings.items() if v is not None}

    def check(self):
        try:
            train_config = self.config.train_config(self.overrides(), seed=0)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.where}: {exc}") from None
        self.check_compression(train_config.compression)

    def check_compression(self, compression):
        pass

    def requires(self):
        return _tflite_modules() if self.config.evaluation["tflite"] else []

    def spec(self):
        train_config = self.config.train_config(self.overrides(), seed=0).to_dict()
        train_config.pop("seed")
        return {"method": self.name, "training": train_config,
                "evaluation": self.evaluation_spec()}

    def describe(self):
        return self.overrides()

    def train(self, ctx):
        from cactus_keras.experiments.training import train

        if not os.path.exists(os.path.join(ctx.directory, "network.keras")):
            config = self.config.train_config(self.overrides(), seed=ctx.seed)
            ctx.log(f"training {config.epochs} epochs ({config.compression_names()} compression)")
            # An interrupted training continues from its last finished epoch.
            train(config, ctx.data, ctx.directory, verbose=ctx.verbose, resume=True)
        return keras.saving.load_model(os.path.join(ctx.directory, "network.keras"), compile=False)

    def run(self, ctx):
        network = self.train(ctx)
        evaluation = self.config.evaluation
        ctx.log("certifying the compression grid")
        rows = ctx.cached("grid", lambda: grid_rows(
            network, ctx, evaluation["prune"], evaluation["bits"]))
        if evaluation["tflite"]:
            ctx.log("exporting and verifying the int8 .tflite files")
            rows = rows + file_rows(network, ctx)
        return rows


class Cactus(TrainedMethod):
    """CACTUS: certified training over the full network and its compressed members."""

    name = "cactus"

    def overrides(self):
        # CACTUS means compression-aware; the shared [training] table may say "none"
        # for the IBP runs, so CACTUS's own default is the full compression set.
        overrides = super().overrides()
        if self.config.training.get("compression", "none") == "none":
            overrides.setdefault("compression", "pruning+awp_quantization")
        return overrides

    def check_compression(self, compression):
        if compression in ("none", []):
            raise ConfigError(
                f"{self.where}: a cactus run needs compression pruning, awp_quantization, "
                "pruning+awp_quantization or a list of member tables; for plain IBP training use "
                "method = \"ibp-then-compress\"."
            )


class IBPThenCompress(TrainedMethod):
    """Plain IBP certified training; pruning and quantization after, no fine-tuning."""

    name = "ibp-then-compress"

    def overrides(self):
        return {**super().overrides(), "compression": "none"}

    def check(self):
        if self.settings.get("compression") not in (None, "none"):
            raise ConfigError(
                f"{self.where}: ibp-then-compress trains without compression members; "
                f"remove compression = {self.settings['compression']!r} (or use method = "
                "\"cactus\")."
            )
        super().check()


class _FromSource(Method):
    """A method that starts from the network of another run (`source`)."""

    allows_zero_learning_rate = False
    # Options whose unset value is resolved from the evaluation grid by `levels_of_grid`.
    level_options = ()

    def check(self):
        if not isinstance(self.settings["source"], str):
            raise ConfigError(f"{self.where}: `source` must be a run name, got {self.settings['source']!r}.")
        for key in ("epochs", "batch_size"):
            if self.settings.get(key) is not None:
                try:
                    validation.check_positive_int(self.settings[key], key)
                except ValueError as exc:
                    raise ConfigError(f"{self.where}: {exc}") from None
        rate = self.settings.get("learning_rate")
        lowest = 0.0 if self.allows_zero_learning_rate else None
        if (not isinstance(rate, (int, float)) or isinstance(rate, bool)
                or not (rate > 0 or rate == lowest)):
            allowed = ">= 0 (0: compress without training)" if lowest is not None else "> 0"
            raise ConfigError(f"{self.where}: `learning_rate` must be {allowed}, got {rate!r}.")
        self.levels_settings = self.levels_of_grid()

    def levels_of_grid(self):
        """The level options (`level_options`), the run's own or the grid's."""
        return {}

    def sources(self):
        return [self.settings["source"]]

    def spec(self):
        # Unset options fall back to the experiment's values, and the results depend on
        # the source run: both are part of what defines this run.
        resolved = {k: self.setting(k) for k in self.options
                    if k != "source" and (k in self.levels_settings or k not in self.level_options)}
        source = self.config.methods.get(self.settings["source"])
        return {**super().spec(), "resolved": resolved,
                "training_limit": self.config.train_config({}, seed=0).limit,
                "source_spec": source.spec() if source is not None else None}

    def setting(self, key):
        """The method's own value, else the experiment's ([training] or [evaluation])."""
        if key in self.levels_settings:
            return self.levels_settings[key]
        value = self.settings.get(key)
        if value is not None:
            return value
        return self.config.train_config({}, seed=0).to_dict()[key]

    def train_data(self, ctx):
        limit = self.config.train_config({}, seed=0).limit
        if limit is None:
            return ctx.x_train, ctx.y_train
        return ctx.x_train[:limit], ctx.y_train[:limit]


class _CertifiedFinetune(_FromSource):
    """A method that fine-tunes the source run's network with certified training of one
    compression member alone (`CactusModel(..., include_full_network=False)`)."""

    def _fine_tuned(self, member, ctx, path, keep_model=False):
        """The source network fine-tuned with `member` (over the devices of the run's
        `distribute`), saved at `path` and loaded back on one device: the compressed
        network (`apply_compression`), or with `keep_model` the `CactusModel` itself,
        its member's state (e.g. the int8 file's trained ranges) kept."""
        from cactus_keras.experiments.training import CLIP_NORM
        from cactus_keras.training.model import CactusModel

        with backend.distribution_scope(backend.resolve_distribute()):
            keras.utils.set_random_seed(ctx.seed)
            network = ctx.source_network(self.settings["source"])
            model = CactusModel(network, self.config.epsilon, compression=[member],
                                standard_weight=self.setting("standard_weight"),
                                input_range=ctx.input_range, include_full_network=False)
            model.compile(optimizer=keras.optimizers.Adam(self.setting("learning_rate"),
                                                          clipnorm=CLIP_NORM))
            x, y = self.train_data(ctx)
            model.fit(x, y, batch_size=self.setting("batch_size"),
                      epochs=self.setting("epochs"), verbose=ctx.verbose)
            (model if keep_model else model.apply_compression()).save(path)
        return keras.saving.load_model(path, compile=False)


class IBPThenFinetune(_CertifiedFinetune):
    """Compress the source run's network once, then certified fine-tuning of the
    compressed network alone for a few epochs: fixed mask for pruning, fake
    quantization with a straight-through estimator for quantization.

    By default it fine-tunes a copy at every compressed level of the evaluation grid
    (each pruning method at each of its ratios, each bit width; the int8 file is
    exported from the 8-bit one), so it costs `epochs` x levels epochs. `prune`
    (method -> ratios), `ratios` (those ratios at each pruning method of the
    grid), `bits` and `tflite` choose other levels.
    """

    name = "ibp-then-finetune"
    options = {"source": "ibp", "epochs": 2, "learning_rate": 1e-4, "batch_size": None,
               "standard_weight": None, "prune": None, "ratios": None, "bits": None,
               "tflite": None}
    level_options = ("prune", "ratios", "bits", "tflite")

    def levels_of_grid(self):
        evaluation = self.config.evaluation
        own = {k: self.settings[k] for k in ("prune", "ratios")
               if self.settings[k] is not None}
        if "ratios" in own and "prune" not in own:
            # Bare ratios: at every pruning method the grid evaluates.
            parse_pruning({"ratios": own["ratios"]}, self.where)
            own = {"prune": {m: own["ratios"] for m in evaluation["prune"]}}
        pruning = parse_pruning(own, self.where)
        bits = self.settings["bits"]
        tflite = self.settings["tflite"]
        if tflite is not None and not isinstance(tflite, bool):
            raise ConfigError(f"{self.where}: `tflite` must be true or false, got {tflite!r}.")
        try:
            bits = evaluation["bits"] if bits is None else check_bits_list(bits)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.where}: {exc}") from None
        return {"prune": evaluation["prune"] if pruning is None else pruning,
                "bits": bits, "tflite": evaluation["tflite"] if tflite is None else tflite}

    def levels(self):
        """The compressed levels this run fine-tunes a copy at (`Level`s)."""
        found = [Level("prune", m, r, None) for m, ratios in self.setting("prune").items()
                 for r in ratios]
        return found + [Level("quantize", None, None, b) for b in self.setting("bits")]

    def requires(self):
        return _tflite_modules("tflite") if self.setting("tflite") and 8 in self.setting("bits") else []

    def run(self, ctx):
        from cactus_keras.compression import FixedMaskPruning, StraightThroughQuantization

        rows = []
        for level in self.levels():
            if level.form == "prune":
                method, ratio = level.pruning_method, level.ratio

                def prune(method=method, ratio=ratio):
                    ctx.log(f"fine-tuning the network pruned at {ratio:g} ({method})")
                    network = self._fine_tuned(
                        FixedMaskPruning(ratio, pruning_method=method), ctx,
                        os.path.join(ctx.directory, f"pruned_{method}_{ratio:g}.keras"))
                    return grid_rows(network, ctx, {method: [ratio]}, [], uncompressed=False)

                rows += ctx.cached(f"prune_{method}_{ratio:g}", prune)
                continue
            bits = level.bits

            def quantize(bits=bits):
                ctx.log(f"fine-tuning the {bits}-bit network (straight-through estimator)")
                network = self._fine_tuned(StraightThroughQuantization(bits), ctx, os.path.join(
                    ctx.directory, f"quantized_{bits}bit.keras"))
                found = grid_rows(network, ctx, {}, [bits], uncompressed=False)
                if bits == 8 and self.setting("tflite"):
                    found += export_rows(network, ctx, "quantized_8bit")
                return found

            rows += ctx.cached(f"quantize_{bits}", quantize)
        return rows


class IBPThenInt8Finetune(_CertifiedFinetune):
    """The QA-IBP-style baseline: the source run's network fine-tuned for a few epochs
    with the `int8_file` member alone (`CactusModel(..., compression=[
    Int8FileQuantization()], include_full_network=False)`): certified training through
    the int8 file's integer arithmetic, as QA-IBP trains a quantized network alone, but
    for TFLite's own scheme (per-channel kernels, asymmetric activations). Its file is
    exported with the ranges the member trained for and certified under each rounding
    model of the grid; it has no other levels.

    `learning_rate` defaults to 1e-5: at 1e-4 the member alone lost 1.1 points of the
    file's certificate in two epochs (results/int8_file_finetune).
    """

    name = "ibp-then-int8-finetune"
    options = {"source": "ibp", "epochs": 2, "learning_rate": 1e-5, "batch_size": None,
               "standard_weight": None, "rounding": DEFAULT_ROUNDING}

    def check(self):
        from cactus_keras.int8.rounding import check_rounding

        super().check()
        try:
            check_rounding(self.settings["rounding"])
        except ValueError as exc:
            raise ConfigError(f"{self.where}: {exc}") from None
        if not self.config.evaluation["tflite"]:
            raise ConfigError(
                f"{self.where}: ibp-then-int8-finetune fine-tunes for the int8 file and "
                "reports only the file; set [evaluation] tflite = true, or remove the run."
            )

    def evaluation_spec(self):
        evaluation = self.config.evaluation
        return {k: evaluation.get(k) for k in ("calibration_samples", "tflite_roundings",
                                               "tflite_output_range", "output_range_samples")}

    def requires(self):
        return _tflite_modules()

    def run(self, ctx):
        from cactus_keras.compression import Int8FileQuantization

        def fine_tune():
            ctx.log("fine-tuning with the int8_file member alone")
            model = self._fine_tuned(Int8FileQuantization(rounding=self.settings["rounding"]),
                                     ctx, os.path.join(ctx.directory, "model.keras"),
                                     keep_model=True)
            # Exported with the ranges the member trained for.
            return export_rows(model, ctx, "network")

        return ctx.cached("tflite_files", fine_tune)


class TFMOT(_FromSource):
    """TensorFlow Model Optimization's pruning and QAT applied to the source run's
    network (on a `tf_keras` twin with copied weights), certified by our bounds.

    TF-MOT fine-tunes with the standard cross-entropy, as its users do: it knows nothing
    of certification. Pruning is per layer (`ConstantSparsity`, unstructured), so its
    rows are a pruning method of their own, "tfmot_constant_sparsity", that the report's
    headline counts at the grid's local_l1 levels of the same ratio. `ratios`
    defaults to the ratios of the grid's unstructured methods (global_l1, local_l1).
    """

    name = "tfmot"
    # learning_rate = 0: TF-MOT compresses the source weights as they are (its masks,
    # its QAT ranges calibrated on one pass), which isolates the compressor from the
    # standard-loss fine-tuning.
    allows_zero_learning_rate = True
    options = {"source": "ibp", "epochs": 1, "learning_rate": 1e-4, "batch_size": None,
               "ratios": None, "quantize": True}
    level_options = ("ratios",)

    def levels_of_grid(self):
        own = self.settings["ratios"]
        if own is not None:
            return {"ratios": parse_pruning({"ratios": own}, self.where)["global_l1"]}
        pruning = self.config.evaluation["prune"]
        ratios = {r for m in ("global_l1", "local_l1") for r in pruning.get(m, [])}
        return {"ratios": sorted(ratios)}

    def check(self):
        super().check()
        if not isinstance(self.settings["quantize"], bool):
            raise ConfigError(f"{self.where}: `quantize` must be true or false.")

    def requires(self):
        found = [("tensorflow_model_optimization", 'method = "tfmot"'),
                 ("tf_keras", 'method = "tfmot"')]
        return found + (_tflite_modules("quantize") if self.settings["quantize"] else [])

    def run(self, ctx):
        from cactus_keras.certification.certificates import certify
        from cactus_keras.compression import compressible_kernels, sparsity
        from cactus_keras.interop import tfmot

        x, y = self.train_data(ctx)
        fit = dict(epochs=self.setting("epochs"), batch_size=self.setting("batch_size"),
                   learning_rate=self.setting("learning_rate"), seed=ctx.seed,
                   verbose=ctx.verbose)
        rows = []
        for ratio in self.setting("ratios"):
            def prune(ratio=ratio):
                ctx.log(f"TF-MOT prune_low_magnitude at {ratio:g}, fine-tune, strip_pruning")
                network = ctx.source_network(self.settings["source"])
                pruned = tfmot.tfmot_prune(network, x, y, ratio, **fit)
                pruned.save(os.path.join(ctx.directory, f"pruned_{ratio:g}.keras"))
                kept = [keras.ops.convert_to_numpy(k) != 0 for k in compressible_kernels(pruned)]
                n = self.config.evaluation.get("bound_samples") or len(ctx.x_test)
                result = certify(pruned, ctx.x_test[:n], ctx.y_test[:n], self.config.epsilon,
                                 bound=self.config.evaluation["bound"],
                                 input_range=ctx.input_range)
                return [row("prune", ratio=ratio, pruning_method="tfmot_constant_sparsity",
                            sparsity=sparsity([k.astype("float32") for k in kept]),
                            clean_accuracy=result.clean_accuracy,
                            certified_accuracy=result.certified_accuracy,
                            samples=len(result.labels))]

            rows += ctx.cached(f"prune_{ratio:g}", prune)
        if self.settings["quantize"]:
            def quantize():
                ctx.log("TF-MOT quantize_model (QAT), fine-tune, int8 conversion")
                network = ctx.source_network(self.settings["source"])
                path = os.path.join(ctx.directory, "qat.int8.tflite")
                tfmot.tfmot_quantize_to_tflite(
                    network, x, y, path,
                    representative_samples=self.config.evaluation["calibration_samples"], **fit)
                return tflite_rows(path, ctx)

            rows += ctx.cached("quantize_tflite", quantize)
        return rows


METHODS = {cls.name: cls for cls in (Cactus, IBPThenCompress, IBPThenFinetune,
                                     IBPThenInt8Finetune, TFMOT)}


def make_method(run_name, options, config, where):
    name = options.get("method")
    if name is None:
        raise ConfigError(f'{where}: `method` is required, one of {", ".join(METHODS)}.')
    if name not in METHODS:
        raise ConfigError(f"{where}: unknown method {name!r}; expected one of {', '.join(METHODS)}.")
    return METHODS[name](run_name, options, config, where)
