"""Distributed training equals one device on the same global batch.

Each run is a subprocess of tests/distributed_steps.py (two SGD steps of a CactusModel
with a pruned and an AWP member, sample weights): devices and clusters must be set
before the backend starts.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from cactus_keras import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "distributed_steps.py")
TOLERANCE = 1e-5


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "XLA_FLAGS")}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env.update(extra)
    return env


def _start(directory, kinds, *flags, **env):
    return subprocess.Popen([sys.executable, SCRIPT, str(directory), *kinds, *flags],
                            env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process, directory, kinds, timeout=300):
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        log, _ = process.communicate()
        pytest.fail(f"distributed run timed out:\n{log[-3000:]}")
    assert process.returncode == 0, log[-3000:]
    return [dict(np.load(os.path.join(directory, f"{kind}.npz"))) for kind in kinds]


def _run(directory, kinds, *flags, timeout=300, **env):
    return _finish(_start(directory, kinds, *flags, **env), directory, kinds, timeout)


def _assert_same(one, many, replicas):
    assert int(many["replicas"]) == replicas and int(one["replicas"]) == 1
    assert int(one["steps"]) == int(many["steps"]) == 2
    logs = sorted(k for k in one if k.startswith("log_"))
    # The loss, its parts and every member's clean and certified accuracy.
    assert {"log_loss", "log_loss_standard", "log_clean_accuracy_pruned",
            "log_certified_accuracy_quantized"} <= set(logs)
    assert sorted(k for k in many if k.startswith("log_")) == logs
    for key in logs + sorted(k for k in one if k.startswith("weight_")):
        np.testing.assert_allclose(many[key], one[key], rtol=0, atol=TOLERANCE, err_msg=key)


@pytest.fixture(scope="module")
def tensorflow_runs(tmp_path_factory):
    """One device, then MirroredStrategy over two logical CPUs, in one process."""
    directory = tmp_path_factory.mktemp("tensorflow")
    return _run(directory, ["none", "mirrored"], "--logical-cpus", "2")


@pytest.mark.slow
def test_mirrored_two_devices_equals_one_device(tensorflow_runs):
    one, mirrored = tensorflow_runs
    _assert_same(one, mirrored, replicas=2)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_loopback_equal_one_worker(tensorflow_runs, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        (tmp_path / str(index)).mkdir()
        processes.append(_start(tmp_path / str(index), ["multi-worker"],
                                TF_CONFIG=json.dumps(config)))
    # Each worker took half of every global batch; both end with one worker's weights.
    for index, process in enumerate(processes):
        (result,) = _finish(process, tmp_path / str(index), ["multi-worker"])
        _assert_same(tensorflow_runs[0], result, replicas=2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="JAX is not installed (pip install 'cactus-keras[test]')")
def test_jax_data_parallel_two_devices_equals_one_device(tmp_path):
    env = dict(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    one, parallel = _run(tmp_path, ["none", "data-parallel"], **env)
    _assert_same(one, parallel, replicas=2)


# ----- members on batch slices (member_batch_fraction) -----

@pytest.mark.slow
def test_mirrored_members_on_batch_slices_equal_one_device_on_the_same_samples(tmp_path):
    # Each replica slices its own half of the batch: one device on batches reordered
    # so that its slices hold the replicas' slices gives the same loss, metrics, weights.
    one, mirrored = _run(tmp_path, ["none", "mirrored"], "--logical-cpus", "2",
                         "--member-batch-fraction", "0.5", "--interleave", "2")
    _assert_same(one, mirrored, replicas=2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="JAX is not installed (pip install 'cactus-keras[test]')")
def test_jax_data_parallel_members_on_batch_slices_equal_one_device(tmp_path):
    # A JAX step sees the global batch and slices it as one device does.
    env = dict(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    one, parallel = _run(tmp_path, ["none", "data-parallel"], "--member-batch-fraction", "0.5",
                         **env)
    _assert_same(one, parallel, replicas=2)


@pytest.mark.slow
def test_mirrored_int8_file_member_equals_one_device(tmp_path):
    # Each replica sees half the batch; the member's activation ranges are the global
    # batch's (min and max over the replicas), so both runs quantize alike.
    # The member's integer interval pass doubles the step: more time on a loaded machine.
    one, mirrored = _run(tmp_path, ["none", "mirrored"], "--logical-cpus", "2", "--int8-file",
                         timeout=600)
    _assert_same(one, mirrored, replicas=2)
    assert "log_certified_accuracy_int8_file" in one
    for key in ("range_minimum", "range_maximum"):
        np.testing.assert_allclose(mirrored[key], one[key], rtol=0, atol=TOLERANCE)
    assert one["range_maximum"][-1] > one["range_minimum"][-1]


def test_interleaved_order_puts_the_replicas_slices_into_one_devices_slices():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from distributed_steps import interleaved

    from cactus_keras.training import member_slice

    order = interleaved(2, 0.5)
    assert order.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]
    for step in range(3):
        for position in range(2):
            one = set(order[np.asarray(member_slice(16, 0.5, position, step))].tolist())
            local = np.asarray(member_slice(8, 0.5, position, step))
            assert one == set(local.tolist()) | set((local + 8).tolist())


# ----- choosing the engine -----

def test_unknown_distribute_names_the_choices():
    with pytest.raises(ValueError, match="none, mirrored, multi-worker, data-parallel"):
        backend.check_distribute("horovod")


def test_engine_of_another_backend_is_refused():
    # The tests run on TensorFlow (conftest).
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        backend.check_distribute("data-parallel")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        backend.check_distribute("multi-worker")


def test_none_scope_changes_nothing():
    with backend.distribution_scope("none"):
        assert backend.active_distribution() == "none"
        assert backend.replica_count() == 1


@pytest.mark.parametrize("config, expected", [
    (None, (0, True)),
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 0}}, (0, True)),
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 1}}, (1, False)),
    ({"cluster": {"chief": ["c"], "worker": ["a"]}, "task": {"type": "worker", "index": 0}},
     (0, False)),
    ({"cluster": {"chief": ["c"], "worker": ["a"]}, "task": {"type": "chief", "index": 0}},
     (0, True)),
])
def test_worker_task(monkeypatch, config, expected):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert backend.worker_task() == expected


# ----- the CLI flag and the TOML key -----

def test_cli_distribute_of_another_backend_exits_2_with_the_flag(tmp_path, capsys):
    from cactus_keras import cli

    code = cli.main(["train", "--dataset", "unused.npz", "--epsilon", "0.1",
                     "--output", str(tmp_path / "run"), "--distribute", "data-parallel"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--distribute 'data-parallel' runs on the jax backend" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_cli_unknown_distribute(capsys):
    from cactus_keras import cli

    assert cli.main(["experiment", "unused.toml", "--output", "x", "--distribute", "two"]) == 2
    assert "--distribute must be one of none, mirrored" in capsys.readouterr().err


def test_multi_worker_workers_write_beside_the_chief(monkeypatch, tmp_path):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 1}}))
    assert backend.worker_directory(str(tmp_path), "multi-worker") == str(tmp_path / "worker1")
    assert backend.worker_directory(str(tmp_path), "mirrored") == str(tmp_path)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 0}}))
    assert backend.worker_directory(str(tmp_path), "multi-worker") == str(tmp_path)


def _experiment(**experiment):
    from cactus_keras.experiments import parse_config

    return parse_config({
        "experiment": {"dataset": "fashion_mnist", "epsilon": 0.1, **experiment},
        "methods": {"c": {"method": "cactus"}},
    })


def test_toml_distribute_is_read_and_checked():
    from cactus_keras.experiments import ConfigError

    assert _experiment().distribute == "none"
    assert _experiment(distribute="mirrored").distribute == "mirrored"
    with pytest.raises(ConfigError, match=r"\[experiment\] `distribute` 'data-parallel' runs on the jax"):
        _experiment(distribute="data-parallel")
    with pytest.raises(ConfigError, match=r"\[experiment\] `distribute` must be one of"):
        _experiment(distribute=2)


def test_distribute_default_is_what_training_resolves():
    assert backend.resolve_distribute() == "none"
    assert backend.resolve_distribute(fallback="mirrored") == "mirrored"
    with backend.distribute_default("mirrored"):
        assert backend.resolve_distribute(fallback="none") == "mirrored"
        assert backend.resolve_distribute("none") == "none"
    assert backend.resolve_distribute() == "none"
