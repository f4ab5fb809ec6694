"""Table of certified accuracy under quantization, IBP-then-quantize vs CACTUS with AWP.

    python tools/summarize_quantization.py results/quantization_fashion_mnist
"""

import json
import os
import sys


def _load(directory, name):
    with open(os.path.join(directory, name)) as f:
        return json.load(f)


def main(directory):
    labels = {
        "ibp": "IBP training, then quantize",
        "cactus_awp4": "CACTUS, AWP member for 4-bit kernels (eta 0.5)",
        "cactus_awp8": "CACTUS, AWP member for 8-bit kernels (eta 0.5)",
    }
    first = _load(directory, "ibp.evaluate.json")
    print(f"Fashion-MNIST test set ({first['rows'][0]['samples']} samples), epsilon {first['epsilon']}, "
          f"IBP certificates for the Keras models; the .tflite files are certified by integer interval "
          f"propagation through their int8 arithmetic.")
    print()
    print("| training | float32: clean / certified | int8 kernels: clean / certified | int4 kernels: clean / certified "
          "| int8 .tflite: clean / certified (floor_ceil) | int8 .tflite certified (nearest) | simulation = interpreter |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run, label in labels.items():
        table = _load(directory, f"{run}.evaluate.json")
        verify = _load(directory, f"{run}.verify_floor_ceil.json")
        nearest = _load(directory, f"{run}.verify_nearest.json")
        cells = []
        for row in table["rows"]:
            cells.append(f"{row['clean_accuracy']:.4f} / {row['certified_accuracy']:.4f}")
        cells.append(f"{verify['clean_accuracy']:.4f} / {verify['certified_accuracy']:.4f}")
        cells.append(f"{nearest['certified_accuracy']:.4f}")
        agreement = min(verify["simulation_agreement"], nearest["simulation_agreement"])
        cells.append(f"{agreement:.4f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/quantization_fashion_mnist")
