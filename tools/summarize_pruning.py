"""Table of certified accuracy at each pruning ratio and method, IBP-then-prune vs CACTUS.

    python tools/summarize_pruning.py results/pruning_fashion_mnist
"""

import json
import os
import sys


def main(directory):
    runs = {}
    for run in ("ibp", "cactus"):
        with open(os.path.join(directory, run, "evaluate.json")) as f:
            runs[run] = json.load(f)
    rows = runs["ibp"]["rows"]
    print(f"Fashion-MNIST test set ({rows[0]['samples']} samples), epsilon {runs['ibp']['epsilon']}, "
          f"IBP certificates, batch norm {'recalibrated' if runs['ibp']['recalibrated_batchnorm'] else 'as trained'}.")
    print()
    print("| pruning method | ratio | sparsity | IBP then prune: clean / certified | CACTUS: clean / certified |")
    print("| --- | --- | --- | --- | --- |")
    def kind(row):
        # Files written before the pruning method had one name call it "method".
        return row.get("pruning_method", row.get("method"))

    for base, ours in zip(runs["ibp"]["rows"], runs["cactus"]["rows"]):
        assert (kind(base), base["ratio"]) == (kind(ours), ours["ratio"])
        print(
            f"| {kind(base)} | {base['ratio']:.2f} | {base['sparsity']:.4f} / {ours['sparsity']:.4f} | "
            f"{base['clean_accuracy']:.4f} / {base['certified_accuracy']:.4f} | "
            f"{ours['clean_accuracy']:.4f} / {ours['certified_accuracy']:.4f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/pruning_fashion_mnist")
