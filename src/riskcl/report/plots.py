"""Plots that read only run results (dicts loaded from run folders); matplotlib with the Agg backend."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_error_taxonomy(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Grouped bars of visual-ambiguity, Type I and Type II counts per method."""
    kinds = [("visual_ambiguity", "visual ambiguity", "#8da0cb"), ("type_i", "Type I (false alarm)", "#fc8d62"),
             ("type_ii", "Type II (missed malignant)", "#d7301f")]
    names = list(runs)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
    for k, (key, label, colour) in enumerate(kinds):
        vals = [runs[n][key] for n in names]
        bars = ax.bar(x + (k - 1) * 0.26, vals, 0.26, label=label, color=colour)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("errors on the test split")
    ax.set_title("Where the errors fall")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
