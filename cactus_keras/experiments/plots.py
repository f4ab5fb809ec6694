"""PNG plots of an experiment's summary rows (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FORM_MARKERS = {"prune": "o", "quantize": "s", "tflite": "^"}
FORM_NAMES = {"prune": "pruned (ratio 0: uncompressed)", "quantize": "fake-quantized kernels",
              "tflite": "int8 .tflite"}


def _colors(runs):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {run: cycle[i % len(cycle)] for i, run in enumerate(runs)}


METHOD_STYLES = {"global_l1": "-", "local_l1": "--", "global_l2_structured": ":"}
METHOD_SHORT = {"global_l1": "G", "local_l1": "L", "global_l2_structured": "S",
                "tfmot_constant_sparsity": "T"}


def certified_vs_pruning(summary, runs, path, title=""):
    """Certified accuracy against pruning ratio, one line per run and pruning method
    (each starting at the uncompressed network; error bars: std over seeds)."""
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, method in runs.items():
        pruned = [e for e in summary if e["run"] == run and e["form"] == "prune"]
        start = [e for e in pruned if e["ratio"] == 0]
        kinds = []
        for e in pruned:
            if e["ratio"] > 0 and e["pruning_method"] not in kinds:
                kinds.append(e["pruning_method"])
        for kind in kinds or [None]:
            points = start + sorted((e for e in pruned if e["ratio"] > 0
                                     and e["pruning_method"] == kind), key=lambda e: e["ratio"])
            if not points:
                continue
            ax.errorbar([e["ratio"] for e in points],
                        [e["certified_accuracy_mean"] for e in points],
                        yerr=[e["certified_accuracy_std"] for e in points], marker="o",
                        capsize=3, color=colors[run], linestyle=METHOD_STYLES.get(kind, "-."),
                        label=f"{run} ({method})" + (f", {kind}" if kind else ""))
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("certified accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def point_label(entry):
    """The compression level of a summary entry, as written next to its point: the
    pruning ratio after its method's letter (G global_l1, L local_l1, S structured, T
    TF-MOT; 0 alone is the uncompressed network), the bit width of fake-quantized
    kernels, or int8 for the file."""
    if entry["form"] == "prune":
        if entry["ratio"] == 0:
            return "0"
        return f"{METHOD_SHORT.get(entry.get('pruning_method'), '')}{entry['ratio']:g}"
    if entry["form"] == "quantize":
        return f"{entry['bits']}b"
    return "int8"


def clean_vs_certified(summary, runs, path, title=""):
    """Clean against certified accuracy of every (run, compression level): colour is
    the run, marker the kind of compression, and the label beside each point its
    level (pruning ratio, bits of fake-quantized kernels, int8 for the .tflite file)."""
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in summary:
        ax.errorbar(e["clean_accuracy_mean"], e["certified_accuracy_mean"],
                    xerr=e["clean_accuracy_std"], yerr=e["certified_accuracy_std"],
                    marker=FORM_MARKERS[e["form"]], color=colors[e["run"]], linestyle="none",
                    alpha=0.8)
        ax.annotate(point_label(e), (e["clean_accuracy_mean"], e["certified_accuracy_mean"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=6,
                    color=colors[e["run"]])
    handles = [plt.Line2D([], [], color=colors[r], marker="o", linestyle="none",
                          label=f"{r} ({m})") for r, m in runs.items()]
    handles += [plt.Line2D([], [], color="gray", marker=FORM_MARKERS[f], linestyle="none",
                           label=FORM_NAMES[f]) for f in FORM_MARKERS]
    handles.append(plt.Line2D([], [], linestyle="none", label="G/L/S/T: global_l1, local_l1, "
                              "structured, TF-MOT"))
    ax.legend(handles=handles, fontsize=7)
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("certified accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
