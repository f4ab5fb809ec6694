"""Optional parts without their extra: one line naming the extra, early."""

import pytest

from cactus_keras import cli, extras
from cactus_keras.experiments import ConfigError, parse_config


def _without(monkeypatch, *modules):
    real = extras.available
    monkeypatch.setattr(extras, "available", lambda m: m not in modules and real(m))


def test_require_names_the_extra(monkeypatch):
    _without(monkeypatch, "tensorflow_datasets")
    with pytest.raises(extras.MissingExtraError, match=r"pip install 'cactus-keras\[tensorflow\]'"):
        extras.require("tensorflow_datasets", "Loading from TensorFlow Datasets")
    extras.require("numpy", "anything")


def test_message_for_import_errors():
    assert "cactus-keras[tune]" in extras.message_for(ModuleNotFoundError("x", name="keras_tuner"))
    assert "cactus-keras[tensorflow]" in extras.message_for(
        ModuleNotFoundError("x", name="tensorflow.lite"))
    assert extras.message_for(ModuleNotFoundError("x", name="numpy")) is None


def _config(evaluation=None, **methods):
    return parse_config({
        "experiment": {"dataset": "fashion_mnist", "epsilon": 0.1},
        "evaluation": evaluation or {},
        "methods": methods or {"c": {"method": "cactus"}},
    })


def test_experiment_with_tflite_needs_the_tensorflow_extra_when_read(monkeypatch):
    _without(monkeypatch, "tensorflow", "ai_edge_litert", "tensorflow_model_optimization",
             "tf_keras")
    with pytest.raises(ConfigError, match=r"\[methods.c\]: \[evaluation\] tflite = true .*"
                       r"pip install 'cactus-keras\[tensorflow\]'"):
        _config()
    with pytest.raises(ConfigError, match=r'\[methods.t\]: method = "tfmot" needs'):
        _config({"tflite": False}, i={"method": "ibp-then-compress"},
                t={"method": "tfmot", "source": "i"})
    # Without TF-only steps the config is fine.
    config = _config({"tflite": False}, i={"method": "ibp-then-compress"},
                     f={"method": "ibp-then-finetune", "source": "i"})
    assert set(config.methods) == {"i", "f"}


def test_cli_names_the_extra_of_a_missing_module(monkeypatch, capsys):
    def run(args):
        raise ModuleNotFoundError("No module named 'ai_edge_litert'", name="ai_edge_litert")

    parser = cli.build_parser()
    args = parser.parse_args(["verify-tflite", "--model", "m.tflite", "--dataset", "d", "--epsilon", "0.1"])
    args.run = run
    args.check_flags = None  # no m.tflite here: the flags' checks would refuse it first
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cactus-keras verify-tflite: error: ai_edge_litert is not installed")
    assert "pip install 'cactus-keras[tensorflow]'" in err and "Traceback" not in err
