"""The package's layering (`.importlinter`): imports only go down, checked by
`lint-imports`, which must also catch an import that goes up."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")

pytestmark = pytest.mark.skipif(not os.path.exists(LINT), reason="import-linter is not installed")


def _lint(root):
    # The package is found on PYTHONPATH and read as source: nothing is imported.
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([LINT, "--config", os.path.join(root, ".importlinter")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def _copy(tmp_path):
    shutil.copytree(os.path.join(ROOT, "cactus_keras"), tmp_path / "cactus_keras",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
    return tmp_path


def test_the_package_keeps_its_layers(tmp_path):
    proc = _lint(str(_copy(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module, upward", [
    # A module-level import from the bottom to the top...
    ("bounds/rules.py", "from cactus_keras import cli  # noqa: F401\n"),
    # ...and a function-local one from compression to export: both go up.
    ("compression/pruning.py",
     "\n\ndef _reversed():\n    from cactus_keras.export import tflite  # noqa: F401\n"),
])
def test_an_import_that_goes_up_breaks_the_contract(tmp_path, module, upward):
    root = _copy(tmp_path)
    path = root / "cactus_keras" / module
    path.write_text(path.read_text() + upward)
    proc = _lint(str(root))
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and "1 broken" in proc.stdout, proc.stdout[-3000:]
