"""Every ```python block of the public names' docstrings and of the docs pages runs.

The docstrings come from the same listing the API reference uses (docs/hooks/reference.py:
each public subpackage's `__all__`); the pages are docs/**/*.md. Each block runs in a
fresh namespace holding the small fixture below, with a temporary directory as the
working directory, so an example may write files. A docs block that cannot run in a test
(a full training, a file the reader has and the test does not) is skipped only when the
line right before its fence says why:

    <!-- skip-example: a 20-epoch training on the full dataset -->
    ```python

Every other block runs. The fixture (what an example may use without defining it):

- `np`, `keras`, `cactus_keras`;
- `x_train, y_train` (256 samples) and `x_test, y_test` (64): Fashion-MNIST-shaped
  float32 images (28, 28, 1) in [0, 1] with integer labels 0..9; `x, y` and
  `x_val, y_val` are `x_test, y_test`;
- `data`: a `cactus_keras.data.Dataset` of those arrays;
- `net`: `cactus_keras.models.cnn3()`, built; `model`: a compiled `CactusModel` around
  another cnn3 (epsilon 0.1, no compression);
- `tmp_path`: the working directory (a `pathlib.Path`).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pathlib
import re
import time

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIP_MARKER = re.compile(r"^\s*<!--\s*skip-example:\s*(?P<reason>\S.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```python\s*$")
# Blocks that train, search, export or run CROWN take seconds each: the slow loop's.
SLOW = re.compile(r"\.fit\(|\.search\(|run_search|run_experiment|to_tflite|verify_tflite|\btrain\(|"
                  r"evaluate_compressed|crown|pgd\(|summarize\(|build_model")


def _reference_hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook",
                                                  ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docstring_blocks():
    """(id, code) of every ```python block in a public name's docstring."""
    hook = _reference_hook()
    blocks = []
    for package in hook.API_PACKAGES:
        for name, value in hook.public_names(package):
            doc = inspect.getdoc(value) or ""
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc, re.S)):
                blocks.append((f"{package}.{name}#{i}", code))
    return blocks


def page_blocks():
    """(id, code, skip reason or None) of every ```python block in docs/**/*.md."""
    blocks = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            fence = FENCE.match(line)
            if not fence:
                continue
            indent, body = len(fence["indent"]), []
            for inner in lines[number + 1:]:
                if inner.strip() == "```":
                    break
                body.append(inner[indent:])
            marker = SKIP_MARKER.match(lines[number - 1]) if number else None
            name = f"{page.relative_to(ROOT)}:{number + 1}"
            blocks.append((name, "\n".join(body) + "\n", marker["reason"] if marker else None))
    return blocks


DOCSTRING_BLOCKS = docstring_blocks()
PAGE_BLOCKS = page_blocks()


def _params(blocks):
    params = []
    for name, code, *skip in blocks:
        marks = [pytest.mark.slow] if SLOW.search(code) else []
        if skip and skip[0]:
            marks.append(pytest.mark.skip(reason=skip[0]))
        params.append(pytest.param(name, code, marks=marks, id=name))
    return params


def fixture_namespace(directory):
    import cactus_keras
    from cactus_keras.data import Dataset

    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, (320, 28, 28, 1)).astype("float32")
    labels = rng.integers(0, 10, 320).astype("int64")
    x_train, y_train, x_test, y_test = images[:256], labels[:256], images[256:], labels[256:]
    net = cactus_keras.models.cnn3(input_shape=(28, 28, 1), num_classes=10)
    model = cactus_keras.CactusModel(cactus_keras.models.cnn3((28, 28, 1), 10), epsilon=0.1)
    model.compile(optimizer="adam")
    return {
        "__name__": "__docs_example__",
        "np": np, "keras": keras, "cactus_keras": cactus_keras,
        "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
        "x": x_test, "y": y_test, "x_val": x_test, "y_val": y_test,
        "data": Dataset(x_train, y_train, x_test, y_test, name="fashion_mnist_like",
                        source="made by tests/test_docs_examples.py", num_classes=10),
        "net": net, "model": model, "tmp_path": directory,
    }


def _registries():
    # The process-wide registries an example may add to (members, bound rules, Keras's
    # serializable classes): restored after each block, so that an example registering
    # a kind ("power_of_two") collides with no other example or test that does too.
    from cactus_keras.bounds import rules
    from cactus_keras.compression import member

    return [member._REGISTRY, rules._REGISTRY, keras.saving.get_custom_objects()]


def run_block(name, code, directory):
    namespace = fixture_namespace(directory)
    saved = [dict(registry) for registry in _registries()]
    previous = os.getcwd()
    os.chdir(directory)
    try:
        exec(compile(code, f"<example {name}>", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(previous)
        for registry, before in zip(_registries(), saved):
            registry.clear()
            registry.update(before)


@pytest.mark.parametrize(("name", "code"), _params(DOCSTRING_BLOCKS))
def test_docstring_example_runs(name, code, tmp_path):
    run_block(name, code, tmp_path)


@pytest.mark.parametrize(("name", "code"), _params(PAGE_BLOCKS))
def test_docs_page_example_runs(name, code, tmp_path):
    run_block(name, code, tmp_path)


def test_examples_are_collected():
    # Every public name has an example (the docs build enforces it), so the docstring
    # blocks are at least as many as the public functions and classes.
    hook = _reference_hook()
    names = [n for p in hook.API_PACKAGES for n, v in hook.public_names(p)
             if not (inspect.isclass(v) and issubclass(v, BaseException))]
    assert len(DOCSTRING_BLOCKS) >= len(names) > 50
    assert len(PAGE_BLOCKS) >= 10


def test_skip_markers_sit_right_before_a_python_fence():
    # A marker anywhere else would skip nothing, silently.
    for page in sorted((ROOT / "docs").rglob("*.md")):
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if "skip-example" in line:
                assert SKIP_MARKER.match(line), f"{page}:{number + 1}: marker has no reason"
                following = lines[number + 1] if number + 1 < len(lines) else ""
                assert FENCE.match(following), (
                    f"{page}:{number + 1}: a skip-example marker must be the line right "
                    f"before a ```python fence")


def test_a_broken_example_fails(tmp_path):
    # The runner really executes the code: an example using a name that does not exist
    # fails, as a docstring whose example drifted from the API would.
    with pytest.raises(AttributeError):
        run_block("broken", "cactus_keras.certify_everything(net, x, y)\n", tmp_path)
    # What a block registers is gone afterwards: the same kind registers again.
    member = ("@cactus_keras.compression.register_member('docs_test_kind')\n"
              "class Member(cactus_keras.compression.CompressionMember):\n"
              "    pass\n")
    run_block("register", member, tmp_path)
    run_block("register again", member, tmp_path)
    start = time.perf_counter()
    run_block("fixture", "assert x_train.shape == (256, 28, 28, 1) and net.built\n", tmp_path)
    assert time.perf_counter() - start < 30
