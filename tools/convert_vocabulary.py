"""Converts committed results and configs to the package's current vocabulary
(cactus_keras/vocabulary.py), so that they read the same numbers under the new names
without retraining.

Text files (JSON, CSV, Markdown, TOML) get exact textual replacements, so their
formatting and every number stay byte for byte; a `.keras` file gets the same
replacements in its config.json, its other entries (the weights) copied unchanged.
Running it twice changes nothing the second time.

    python tools/convert_vocabulary.py results examples/configs
"""

from __future__ import annotations

import os
import sys
import zipfile

# (old, new): exact strings, applied in order. Each new string is unambiguous, so the
# replacements are idempotent.
TEXT_REPLACEMENTS = [
    # The AWP member is named after its method: class AWPQuantization, kind awp_quantization.
    ('"kind": "quantization"', '"kind": "awp_quantization"'),
    ('kind = "quantization"', 'kind = "awp_quantization"'),
    # TrainConfig names its training set's short forms by the member kinds, and its
    # pruning range by the member's setting `ratio`.
    ('"compression": "prune+quant"', '"compression": "pruning+awp_quantization"'),
    ('"compression": "prune"', '"compression": "pruning"'),
    ('"compression": "quant"', '"compression": "awp_quantization"'),
    ('"train_compression": "prune+quant"', '"train_compression": "pruning+awp_quantization"'),
    ('"train_compression": "prune"', '"train_compression": "pruning"'),
    ('"train_compression": "quant"', '"train_compression": "awp_quantization"'),
    ('compression = "prune+quant"', 'compression = "pruning+awp_quantization"'),
    ('"prune_range":', '"ratio":'),
    ('prune_range = ', 'ratio = '),
    # The evaluation grid names its evaluated prune levels by the form `prune`
    # ([evaluation.prune], tflite_prune, an ibp-then-finetune run's `prune`), and a list
    # of ratios by the setting's plural `ratios` (TF-MOT, ibp-then-finetune, shorthand).
    ('"pruning": {', '"prune": {'),
    ('"pruning": null', '"prune": null'),
    ('"tflite_pruning":', '"tflite_prune":'),
    ('"prune_ratios":', '"ratios":'),
    ('[evaluation.pruning]', '[evaluation.prune]'),
    ('\npruning = {', '\nprune = {'),
    ('tflite_pruning = ', 'tflite_prune = '),
    ('prune_ratios = ', 'ratios = '),
    # Tuning's pruning-range hyperparameters are named after the member's setting.
    ('prune_ratio_low', 'ratio_low'),
    ('prune_ratio_high', 'ratio_high'),
]
KERAS_CONFIG_REPLACEMENTS = [
    ('"class_name": "Quantization"', '"class_name": "AWPQuantization"'),
    ('"cactus_keras>Quantization"', '"cactus_keras>AWPQuantization"'),
]
TEXT_SUFFIXES = (".json", ".csv", ".md", ".toml", ".log")


def replace_all(text, replacements):
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def convert_text(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    converted = replace_all(text, TEXT_REPLACEMENTS)
    if converted == text:
        return False
    with open(path, "w", encoding="utf-8") as f:
        f.write(converted)
    return True


def convert_keras(path):
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    changed = False
    out = []
    for info, data in entries:
        if info.filename == "config.json":
            text = data.decode("utf-8")
            converted = replace_all(text, KERAS_CONFIG_REPLACEMENTS + TEXT_REPLACEMENTS)
            if converted != text:
                data, changed = converted.encode("utf-8"), True
        out.append((info, data))
    if not changed:
        return False
    temporary = path + ".converting"
    with zipfile.ZipFile(temporary, "w") as archive:
        for info, data in out:
            archive.writestr(info, data)
    os.replace(temporary, path)
    return True


def convert(paths):
    changed = []
    for root in paths:
        walk = [(os.path.dirname(root), [], [os.path.basename(root)])] if os.path.isfile(root) \
            else os.walk(root)
        for folder, _, files in walk:
            for name in sorted(files):
                path = os.path.join(folder, name)
                if name.endswith(".keras"):
                    done = convert_keras(path)
                elif name.endswith(TEXT_SUFFIXES):
                    done = convert_text(path)
                else:
                    continue
                if done:
                    changed.append(path)
    return changed


if __name__ == "__main__":
    for path in convert(sys.argv[1:] or ["results"]):
        print(path)
