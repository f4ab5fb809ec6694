"""Shared helpers of the command-line tests: a subprocess's environment and the
one-line error a refused command must print."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra):
    """The environment of a `cactus-keras` subprocess: this checkout first on the path,
    TensorFlow's start-up lines off, output unbuffered (a test reads it line by line)."""
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


def one_error_line(capsys):
    """The command's stderr, checked to be one error line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("cactus-keras "), err
    return lines[-1]
