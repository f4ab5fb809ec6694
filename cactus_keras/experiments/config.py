"""Experiment configuration files (TOML): parsing and validation before any training.

A config has four tables. Every key is checked, so a typo is an error, not a default:

```toml
[experiment]
dataset = "fashion_mnist"      # a name or a path (IDX directory or .npz)
epsilon = 0.1
seeds = 1                      # runs per method (seeds 0 .. seeds-1); --seeds overrides
test_samples = 10000           # evaluate on the first N test samples (default: all)
distribute = "none"            # training over devices/workers: none, mirrored,
                               # multi-worker, data-parallel; --distribute overrides

[training]                     # TrainConfig fields shared by the trained methods
arch = "cnn3"
epochs = 10
certified_loss = "worst-case"  # or "mtl-ibp" (mtl_alpha, attack_steps), "sabr" (sabr_lambda, attack_steps)

[evaluation]                   # the grid; the uncompressed network is always in it
bits = [8, 4]                  # fake-quantized kernels
tflite = true                  # also export int8 .tflite and certify the file itself
bound = "ibp"                  # or crown-ibp, crown, alpha-crown, best
bound_samples = 1000           # the grid certifies the first N test samples (default: all)
[evaluation.prune]             # pruning method -> its ratios (default: this grid);
global_l1 = [0.5, 0.7, 0.8, 0.9, 0.95]   # shorthand for one method:
local_l1 = [0.5, 0.7, 0.8, 0.9, 0.95]    # ratios = [...] (+ pruning_method)
global_l2_structured = [0.3, 0.5, 0.7]

[methods.ibp]                  # one table per run name; `method` picks the method
method = "ibp-then-compress"
[methods.cactus]
method = "cactus"
compression = "pruning+awp_quantization"  # TrainConfig fields override [training]
[methods.ibp-finetune]
method = "ibp-then-finetune"
source = "ibp"                 # the run whose networks it fine-tunes, at every level
[methods.cactus-set]           # any set: a list of member tables, each with its settings
method = "cactus"
compression = [{kind = "pruning", ratio = [0.5, 0.95], pruning_method = "global_l1"},
               {kind = "awp_quantization", bits = 4}]
member_weight = 1.0            # each member's weight relative to the full network
member_weight_ramp = "epsilon" # the weight follows the epsilon ramp ("none": constant)
member_batch_fraction = 0.25   # each member trains on its own quarter of each batch
```

`cactus-keras experiment CONFIG --dataset NAME|PATH` (`load_config(path, dataset=)`)
replaces [experiment] `dataset`; the report says so and the runs' fingerprints hold it.

See `cactus_keras.experiments.methods` for each method's options.
"""

from __future__ import annotations

import dataclasses
import os

from cactus_keras import backend, validation
from cactus_keras.experiments.errors import ConfigError
from cactus_keras.experiments.examples import example_config, example_names  # noqa: F401
from cactus_keras.experiments.evaluation import check_evaluation, check_keys
from cactus_keras.experiments.methods import make_method
from cactus_keras.experiments.training import TRAIN_FIELDS, TrainConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

EXPERIMENT_KEYS = {"name", "description", "dataset", "epsilon", "seeds", "test_samples", "download",
                   "distribute"}


@dataclasses.dataclass
class ExperimentConfig:
    """A parsed and validated experiment config (see the module docstring).

    Example:

    ```python
    path = cactus_keras.experiments.example_config("quickstart")
    config = cactus_keras.experiments.load_config(path)          # an ExperimentConfig
    print(config.name, config.dataset, config.epsilon, sorted(config.methods))
    ```
    """

    name: str
    dataset: str
    epsilon: float
    seeds: int
    training: dict
    evaluation: dict
    methods: dict  # run name -> Method (cactus_keras.experiments.methods)
    test_samples: int | None = None
    download: bool = True
    description: str = ""
    path: str | None = None
    # How training runs are spread over devices (not part of any run's results).
    distribute: str = "none"
    # The config file's own dataset when `dataset` was overridden (--dataset), else None.
    config_dataset: str | None = None
    # The config file's own epsilon when `epsilon` was overridden (--epsilon), else None.
    config_epsilon: float | None = None

    def train_config(self, overrides, seed):
        """The TrainConfig of a trained run: [training], then the run's overrides."""
        fields = {**self.training, **overrides}
        if "ratio" in fields:
            fields["ratio"] = tuple(fields["ratio"])
        return TrainConfig(dataset=self.dataset, epsilon=self.epsilon, seed=seed, **fields)

    def ordered_runs(self):
        """Run names with every source before the runs that use it."""
        order, seen = [], set()

        def visit(name, chain):
            if name in seen:
                return
            if name in chain:
                raise ConfigError(f"methods form a cycle through `source`: {' -> '.join(chain + [name])}.")
            for source in self.methods[name].sources():
                visit(source, chain + [name])
            seen.add(name)
            order.append(name)

        for name in self.methods:
            visit(name, [])
        return order

    def to_dict(self):
        return {
            "name": self.name,
            "description": self.description,
            "dataset": self.dataset,
            "epsilon": self.epsilon,
            "seeds": self.seeds,
            "test_samples": self.test_samples,
            "training": self.training,
            "evaluation": self.evaluation,
            "methods": {name: m.spec() for name, m in self.methods.items()},
            **({"config_dataset": self.config_dataset} if self.config_dataset is not None else {}),
            **({"config_epsilon": self.config_epsilon} if self.config_epsilon is not None else {}),
        }


def _table(data, key, where):
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: `{key}` must be a table ([{key}]), got {value!r}.")
    return value


def parse_config(data, path=None, seeds=None, dataset=None, epsilon=None, runs=None):
    """An `ExperimentConfig` from the dict of a TOML file; raises `ConfigError`.

    `seeds`, `dataset` (a dataset name or path) and `epsilon` override [experiment];
    `runs` (run names) keeps those runs and the runs they start from."""
    where = path or "config"
    check_keys(data, {"experiment", "training", "evaluation", "methods"}, where)
    experiment = _table(data, "experiment", where)
    check_keys(experiment, EXPERIMENT_KEYS, f"{where} [experiment]")
    for key in ("dataset", "epsilon"):
        if key not in experiment and not (key == "dataset" and dataset is not None):
            # No backticks: the command line would read `dataset` as its --dataset flag.
            raise ConfigError(f"{where} [experiment]: key {key!r} is required.")
    if dataset is not None and (not isinstance(dataset, (str, os.PathLike)) or not os.fspath(dataset)):
        raise ConfigError(f"`dataset` must be a dataset name or a path, got {dataset!r}.")
    config_epsilon = experiment.get("epsilon") if epsilon is not None else None
    if epsilon is not None:
        experiment = {**experiment, "epsilon": epsilon}
    try:
        value = experiment["epsilon"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # TOML gives "0.1" (quoted) as a string: refused, not read as a number.
            raise TypeError(f"`epsilon` must be a number (epsilon = 0.1, no quotes), got {value!r}.")
        epsilon = validation.check_epsilon(value)
        validation.check_epsilon_range(epsilon, (0.0, 1.0))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} [experiment]: {exc}" if epsilon is None
                          else f"`epsilon` (replacing the config's): {exc}") from None
    count = experiment.get("seeds", 1) if seeds is None else seeds
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{where}: `seeds` must be a positive integer, got {count!r}.")
    test_samples = experiment.get("test_samples")
    if test_samples is not None:
        try:
            validation.check_positive_int(test_samples, "test_samples")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where} [experiment]: {exc}") from None
    distribute = experiment.get("distribute", "none")
    try:
        backend.check_distribute(distribute, f"{where} [experiment] `distribute`")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    training = _table(data, "training", where)
    check_keys(training, TRAIN_FIELDS, f"{where} [training]")
    evaluation = check_evaluation(_table(data, "evaluation", where), f"{where} [evaluation]")
    methods_table = _table(data, "methods", where)
    if not methods_table:
        raise ConfigError(
            f"{where}: no methods; add tables such as [methods.cactus] with "
            'method = "cactus".'
        )
    name = experiment.get("name") or (os.path.splitext(os.path.basename(path))[0] if path else "experiment")
    config = ExperimentConfig(
        name=str(name),
        description=str(experiment.get("description", "")),
        dataset=os.fspath(dataset) if dataset is not None else str(experiment["dataset"]),
        epsilon=epsilon,
        seeds=count,
        training=dict(training),
        evaluation=evaluation,
        methods={},
        test_samples=test_samples,
        download=bool(experiment.get("download", True)),
        path=path,
        distribute=distribute,
        config_dataset=(str(experiment.get("dataset")) if dataset is not None else None),
        config_epsilon=config_epsilon,
    )
    for run_name, options in methods_table.items():
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: [methods.{run_name}] must be a table, got {options!r}.")
        config.methods[run_name] = make_method(run_name, options, config, f"{where} [methods.{run_name}]")
    for run_name, method in config.methods.items():
        for source in method.sources():
            if source not in config.methods:
                raise ConfigError(
                    f"{where} [methods.{run_name}]: source {source!r} is not a run of this "
                    f"config; runs: {', '.join(config.methods)}."
                )
            if not config.methods[source].produces_network:
                raise ConfigError(
                    f"{where} [methods.{run_name}]: source {source!r} is a "
                    f"{config.methods[source].name!r} run, which trains no network of its "
                    "own; use a cactus or ibp-then-compress run."
                )
    if runs is not None:
        _keep_runs(config, runs)
    config.ordered_runs()
    _check_optional_modules(config, where)
    return config


def _keep_runs(config, runs):
    """Drops every run that is not in `runs` and that no run in `runs` starts from."""
    names = [runs] if isinstance(runs, str) else list(runs)
    unknown = [n for n in names if n not in config.methods]
    if not names or unknown:
        raise ConfigError(f"`runs` must name runs of the config ({', '.join(config.methods)}), "
                          f"got {', '.join(map(repr, unknown or names)) or 'none'}.")
    keep = set()

    def visit(name):
        if name not in keep:
            keep.add(name)
            for source in config.methods[name].sources():
                visit(source)

    for name in names:
        visit(name)
    config.methods = {n: m for n, m in config.methods.items() if n in keep}


def _check_optional_modules(config, where):
    # Before any training: a missing extra must not stop an experiment halfway.
    from cactus_keras import extras

    for run_name, method in config.methods.items():
        for module, what in method.requires():
            if not extras.available(module):
                raise ConfigError(
                    f"{where} [methods.{run_name}]: {extras.missing_message(module, what)} "
                    "Or drop that step from the config (tflite = false, no tfmot run)."
                )


def load_config(path, seeds=None, dataset=None, epsilon=None, runs=None):
    """Reads and validates an experiment TOML file; `seeds`, `dataset` (a name or a
    path, as [experiment] `dataset`) and `epsilon` override the file's; `runs` keeps
    the named runs (and the runs they start from) only.

    Example:

    ```python
    path = cactus_keras.experiments.example_config("quickstart")
    config = cactus_keras.experiments.load_config(path, seeds=2, dataset="mnist")
    assert config.seeds == 2 and config.dataset == "mnist"
    ```
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No experiment config at '{path}'"
            + (" (it is a directory)" if os.path.isdir(path) else "")
            + "; start from a shipped example: `cactus-keras experiment --example NAME` "
            f"with NAME one of {', '.join(example_names())} (`cactus_keras.experiments."
            "example_config(NAME)` gives its path)."
        )
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path=path, seeds=seeds, dataset=dataset, epsilon=epsilon,
                        runs=runs)
