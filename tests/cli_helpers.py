"""Shared helpers of the command-line tests: a subprocess's environment and the
one-line error a refused command must print."""

import json
import os
import subprocess
import sys

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


def refused_before_backends(argvs, cwd):
    """Runs each argv through `cli.main` in one subprocess; checks that every one exits 2
    with none of TensorFlow, Keras or JAX imported, and returns the stderr."""
    script = (
        "import json, sys\n"
        "from cactus_keras import cli\n"
        f"codes = [cli.main(a) for a in {argvs!r}]\n"
        "print(json.dumps({'codes': codes, 'loaded': [m for m in ('tensorflow', 'keras', 'jax')"
        " if m in sys.modules]}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env(), timeout=120, cwd=cwd)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"codes": [2] * len(argvs), "loaded": []}, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr
