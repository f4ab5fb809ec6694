"""`run_experiment`: every (seed, run) of a config, resumable, then the report."""

from __future__ import annotations

import json
import os
import sys
import time

from cactus_keras.experiments.errors import ConfigError
from cactus_keras.atomic_write import write_json
from cactus_keras.data.digest import data_digest  # noqa: F401  (re-exported)
from cactus_keras.run_lock import folder_lock
from cactus_keras.experiments.methods import RunContext, TrainedMethod


def _jsonable(value):
    return json.loads(json.dumps(value))


def _spec(config, method, seed, data_digest):
    # The data's digest too: the same name or path may hold other data on another
    # machine or day, and runs on other data must be refused, not mixed.
    return _jsonable({**method.spec(), "seed": seed, "dataset": config.dataset,
                      "data_digest": data_digest, "epsilon": config.epsilon,
                      "test_samples": config.test_samples})


def load_data(config):
    """The config's dataset; an overridden one (`dataset=`, --dataset) that cannot be
    loaded is a one-line error naming the override."""
    from cactus_keras.data import load

    if config.config_dataset is None:
        return load(config.dataset, download=config.download)
    try:
        return load(config.dataset, download=config.download)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        hint = ("" if "x_train" in text else " Give mnist, fashion_mnist, cifar10, digits, or a path "
                "to a directory of IDX files or CIFAR-10 batches, or to an .npz with "
                "x_train, y_train, x_test, y_test.")
        raise ConfigError(
            f"`dataset` {config.dataset!r} (replacing the config's "
            f"{config.config_dataset!r}): {text}{hint}") from None


def _epsilon_reached(directory):
    """The epsilon a run trained in `directory` reached (its config.json), or None
    for a run that trained no certified network there."""
    try:
        with open(os.path.join(directory, "config.json")) as f:
            value = json.load(f).get("epsilon_reached")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _read_seconds(path):
    try:
        with open(path) as f:
            return float(json.load(f)["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _preflight(config, data, output, digest=None):
    """Everything that can fail before training: architectures against the data,
    and runs already in `output` made with other settings (or other data). Returns
    the `(run name, seed)` of the runs whose [evaluation] grid changed only, which are
    evaluated again (`_reevaluate`)."""
    from cactus_keras import models

    digest = digest or data_digest(data)

    for name, method in config.methods.items():
        if isinstance(method, TrainedMethod):
            train_config = config.train_config(method.overrides(), seed=0)
            try:
                models.get(train_config.arch, data.input_shape, data.num_classes,
                           batch_norm=train_config.batch_norm)
            except ValueError as exc:
                raise ConfigError(
                    f"[methods.{name}]: architecture {train_config.arch!r} cannot take "
                    f"{data.name}'s inputs of shape {data.input_shape}: {exc}"
                ) from None
    stale = set()
    for seed in range(config.seeds):
        for name, method in config.methods.items():
            path = os.path.join(output, "runs", name, f"seed{seed}", "spec.json")
            if os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
                spec = _spec(config, method, seed, digest)
                if saved != spec and _evaluation_only(saved, spec, method):
                    stale.add((name, seed))
                    continue
                if saved != spec:
                    other = ("data" if saved.get("data_digest") not in (None, digest)
                             else "settings")
                    raise ConfigError(
                        f"{os.path.dirname(path)} holds a run made with other {other} than "
                        f"this config's ({'; '.join(_differences(saved, spec))}); use another "
                        "--output, or delete that folder to rerun it."
                    )
    return stale


def _without_grid(spec, level_options=()):
    """A run's spec without what the [evaluation] grid decides: its `evaluation`, the
    levels it resolved from the grid (`level_options`), its source's `evaluation`."""
    out = {k: v for k, v in spec.items() if k != "evaluation"}
    if isinstance(out.get("resolved"), dict):
        out["resolved"] = {k: v for k, v in out["resolved"].items() if k not in level_options}
    if isinstance(out.get("source_spec"), dict):
        out["source_spec"] = _without_grid(out["source_spec"])
    return out


def _evaluation_only(saved, spec, method):
    """Whether a run's saved spec differs from `spec` in what the evaluation grid
    decides only: its training still stands, and its rows must be computed again."""
    levels = getattr(method, "level_options", ())
    return _without_grid(saved, levels) == _without_grid(spec, levels)


def _reevaluate(directory, log):
    """Removes a run's results and steps (a trained network stays), so the run
    evaluates over the changed grid; a fine-tuning run fine-tunes its levels again."""
    import shutil

    log("the evaluation grid changed since this run: evaluating it again")
    for name in ("result.json", "seconds.json"):
        if os.path.exists(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    shutil.rmtree(os.path.join(directory, "steps"), ignore_errors=True)


def _differences(saved, spec):
    """The keys of a run's spec that differ from the saved one's, as `key: saved X,
    now Y` (nested tables by dotted key; the data by its digest only)."""
    def flat(table, prefix=""):
        items = {}
        for key, value in table.items():
            if isinstance(value, dict):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[f"{prefix}{key}"] = value
        return items

    saved, spec = flat(saved), flat(spec)
    lines = []
    for key in [*spec, *(k for k in saved if k not in spec)]:
        if saved.get(key) == spec.get(key):
            continue
        if key == "data_digest":
            lines.append("data: other arrays than the run's")
        else:
            lines.append(f"{key}: saved {saved.get(key, 'none')!r}, now {spec.get(key, 'none')!r}")
    return lines


def run_experiment(config, output, *, verbose=None, progress=True, command=None,
                   distribute=None, data=None, seed=None):
    """Runs every method of `config` for each seed, then writes the results into
    `output` (results.json, results.csv, runs.csv, report.md, PNG plots).

    Runs whose results are already in `output` are not run again; a run that was
    interrupted resumes at its last finished step (training, each evaluation).
    Returns the path of report.md.

    `distribute` (default: the `backend.distribute_default`, else [experiment]
    `distribute`) spreads the training of the cactus, ibp-then-compress and
    ibp-then-finetune runs over devices or workers; evaluation, export and TF-MOT run
    on one device. On a multi-worker run the workers other than the chief write into
    `output/worker<index>`. `data` (a `cactus_keras.data.Dataset` of `config.dataset`,
    already loaded) saves loading it again. `seed` (one of 0 .. seeds-1) runs that
    seed's runs only, e.g. one process per core or machine, each into its own `output`:
    copy their `runs/<name>/seed<N>` folders into one `output` and run again without
    `seed` for the report of all seeds (finished runs are not rerun).

    A run whose saved settings differ from the config's in the [evaluation] grid only
    is evaluated again: a trained run (cactus, ibp-then-compress) keeps its network; a
    run from a source (fine-tuning, TF-MOT) computes its levels again.

    Example:

    ```python
    # The shipped configs run for hours (full datasets):
    # config = cactus_keras.experiments.load_config(
    #     cactus_keras.experiments.example_config("fashion_mnist_cpu"))
    # A tiny one on the data in hand: one epoch, one method, one pruned row.
    with open("tiny.toml", "w") as f:
        f.write('''
    [experiment]
    dataset = "fashion_mnist"
    epsilon = 0.01
    [training]
    arch = "cnn3"
    epochs = 1
    batch_size = 64
    validation_samples = 0
    [evaluation]
    tflite = false
    [evaluation.prune]
    global_l1 = [0.5]
    [methods.cactus]
    method = "cactus"
    compression = [{kind = "pruning", ratio = [0.25, 0.75]}]
    ''')
    config = cactus_keras.experiments.load_config("tiny.toml")
    report = cactus_keras.experiments.run_experiment(config, "runs/tiny", data=data,
                                                     progress=False, verbose=0)
    print(open(report).read())
    ```
    """
    from cactus_keras import backend

    distribute = backend.check_distribute(
        backend.resolve_distribute(distribute, fallback=config.distribute))
    output = backend.worker_directory(output, distribute)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed < config.seeds):
        raise ConfigError(f"`seed` must be one of the config's seeds 0..{config.seeds - 1}, "
                          f"got {seed!r}.")
    with backend.distribute_default(distribute):
        return _run(config, output, verbose, progress, command, data, seed)


def _run(config, output, verbose, progress, command, data, only_seed=None):
    data = data if data is not None else load_data(config)
    digest = data_digest(data)
    stale = _preflight(config, data, output, digest)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    # One writer at a time: a second experiment into `output` is refused.
    with folder_lock(output, "The experiment folder",
                     "wait for it to finish, or choose another output folder"):
        return _run_locked(config, output, verbose, progress, command, data, digest,
                           only_seed, stale)


def _run_locked(config, output, verbose, progress, command, data, digest, only_seed=None,
                stale=()):
    from tqdm.auto import tqdm

    from cactus_keras.experiments.report import write_results

    os.makedirs(output, exist_ok=True)
    n = config.test_samples or len(data.x_test)
    x_test, y_test = data.x_test[:n], data.y_test[:n]
    data_note = f"{data.name} ({data.source}), {len(x_test)} test samples"
    if config.config_dataset is not None:
        data_note += (f" (dataset `{config.dataset}` given in place of the config's "
                      f"`{config.config_dataset}`)")
    if config.config_epsilon is not None:
        data_note += (f" (epsilon {config.epsilon:g} given in place of the config's "
                      f"{config.config_epsilon:g}: the description's epsilon is the config's)")
    command = command or f"cactus-keras experiment {config.path} --output {output}"
    seeds = range(config.seeds) if only_seed is None else [only_seed]
    plan = [(seed, name) for seed in seeds for name in config.ordered_runs()]
    bar = tqdm(plan, desc="experiment", unit="run", disable=not progress, file=sys.stderr)
    records = []
    for seed, name in bar:
        method = config.methods[name]
        directory = os.path.join(output, "runs", name, f"seed{seed}")
        done = os.path.join(directory, "result.json")
        bar.set_postfix_str(f"{name} seed {seed}")
        if (name, seed) in stale:
            _reevaluate(directory, lambda text, name=name, seed=seed:
                        tqdm.write(f"[{name} seed {seed}] {text}"))
        if os.path.exists(done):
            with open(done) as f:
                records.append(json.load(f))
            tqdm.write(f"[{name} seed {seed}] done before, not rerun")
            continue
        write_json(os.path.join(directory, "spec.json"), _spec(config, method, seed, digest))
        sources = {s: os.path.join(output, "runs", s, f"seed{seed}") for s in method.sources()}
        ctx = RunContext(config=config, data=data, x_test=x_test, y_test=y_test, seed=seed,
                         directory=directory, source_directories=sources, verbose=verbose,
                         log=lambda text, name=name, seed=seed: tqdm.write(f"[{name} seed {seed}] {text}"))
        # The time of every call that worked on this run, interrupted ones included.
        timing = os.path.join(directory, "seconds.json")
        spent = _read_seconds(timing)
        start = time.perf_counter()
        try:
            rows = method.run(ctx)
        except BaseException:
            write_json(timing, {"seconds": spent + time.perf_counter() - start})
            raise
        record = {"run": name, "method": method.name, "seed": seed,
                  "seconds": spent + time.perf_counter() - start,
                  "rows": [{"run": name, "method": method.name, "seed": seed, **r} for r in rows]}
        reached = _epsilon_reached(directory)
        if reached is not None:
            record["epsilon_reached"] = reached
        write_json(done, record)
        records.append(record)
    bar.close()
    return write_results(output, config, records, data_note, command)
