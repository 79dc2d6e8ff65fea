"""Plots that read only run results (dicts loaded from run folders); matplotlib with the Agg backend."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path, dpi: int = 130) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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
    return _save(fig, path, dpi=120)


def plot_pareto(summary, front, curves: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """CER (x, lower is safer) vs F1-macro (y) per method with seed std bars, the frontier, and post-hoc
    threshold curves of trained models (dashed)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, curve in curves.items():
        ax.plot(100 * curve["cer"], curve["f1_macro"], "--", lw=0.9, alpha=0.6, label=f"{name} + threshold")
    ax.errorbar(100 * summary["cer_mean"], summary["f1_mean"], xerr=100 * summary["cer_std"].fillna(0),
                yerr=summary["f1_std"].fillna(0), fmt="o", color="k", ms=5, capsize=2, lw=0.8, zorder=3)
    for _, r in summary.iterrows():
        ax.annotate(r["method"], (100 * r["cer_mean"], r["f1_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.step(100 * front["cer_mean"], front["f1_mean"], where="post", color="#d7301f", lw=1.5,
            label="Pareto frontier (trained)", zorder=2)
    # Zoom on the trained models' neighbourhood; the curves' far ends (high thresholds) say little.
    ax.set_xlim(-0.3, min(100.5, max(10.0, 2.5 * 100 * float((summary["cer_mean"]
                                                             + summary["cer_std"].fillna(0)).max()))))
    ax.set_ylim(max(0.0, float(summary["f1_mean"].min()) - 0.1), min(1.0, float(summary["f1_mean"].max()) + 0.05))
    ax.set_xlabel("Critical Error Rate (%)  [lower is safer]")
    ax.set_ylabel("F1-macro")
    ax.set_title(title or "Safety-accuracy trade-off")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cer_curves(histories: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Validation CER per epoch, mean over seeds, one line per method (the paper's Figure 3)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, hist in histories.items():
        ax.plot(hist["epoch"], 100 * hist["val_cer"], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation CER (%)")
    ax.set_title(title or "Critical Error Rate during training")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_subgroup_cer(tables: Mapping[str, list], path: str | Path, title: str = "") -> Path:
    """CER per subgroup with its 95% interval, one marker series per method (``tables``: method -> rows of
    :func:`riskcl.metrics.subgroups.subgroup_metrics`); groups flagged as too small are drawn hollow."""
    methods = list(tables)
    groups = sorted({r["group"] for rows in tables.values() for r in rows})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(groups) + 2.5), 4.0))
    width = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        by = {r["group"]: r for r in tables[m]}
        for g_i, g in enumerate(groups):
            r = by.get(g)
            if r is None or r["cer"]["n"] == 0:
                continue
            x = g_i - 0.4 + width * (k + 0.5)
            v, lo, hi = (100 * r["cer"][q] for q in ("value", "low", "high"))
            ax.errorbar([x], [v], yerr=[[v - lo], [hi - v]], fmt="o", color=f"C{k}", ms=5, capsize=2,
                        mfc="white" if r["too_few_malignant"] else f"C{k}", label=m if g_i == 0 else None)
    ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("CER (%) with 95% CI")
    ax.set_title(title or "Critical Error Rate per subgroup (hollow: too few malignant cases)")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_reliability(probs: np.ndarray, target: np.ndarray, path: str | Path, n_bins: int = 15,
                     title: str = "") -> Path:
    """Reliability diagram: accuracy of the top-label prediction per confidence bin (bars) against the
    diagonal, with each bin's share of the data; the gap is what the expected calibration error averages."""
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == target).astype(float)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    acc = np.array([correct[bins == b].mean() if (bins == b).any() else np.nan for b in range(n_bins)])
    share = np.bincount(bins, minlength=n_bins) / len(bins)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.bar(centres, np.nan_to_num(acc), width=1 / n_bins, edgecolor="k", lw=0.5, color="#9ecae1", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="#d7301f", lw=1, label="perfect calibration")
    ax.plot(centres, share, "o-", color="#636363", ms=3, lw=0.8, label="share of cases")
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy / share")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "Reliability diagram")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return _save(fig, path)


def plot_severity_confusions(confusions: Mapping[str, np.ndarray], classes, superclass, path: str | Path) -> Path:
    """Confusion matrices (counts summed over seeds) with cells shaded by severity: correct, visual
    ambiguity, Type I, Type II."""
    from matplotlib.colors import ListedColormap

    sup = np.asarray(superclass)
    kind = np.where(sup[:, None] == sup[None, :], 1, np.where(sup[:, None] == 1, 3, 2))
    np.fill_diagonal(kind, 0)
    cmap = ListedColormap(["#e5f5e0", "#deebf7", "#fee6ce", "#fcbba1"])
    n = len(confusions)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    k = len(classes)
    fig, axes = plt.subplots(rows, cols, figsize=(0.55 * k * cols + 1.5, 0.55 * k * rows + 1.2), squeeze=False)
    for ax, (name, cm) in zip(axes.flat, confusions.items()):
        ax.imshow(kind, cmap=cmap, vmin=0, vmax=3)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        fontweight="bold" if kind[i, j] == 3 and cm[i, j] else "normal")
        ax.set_xticks(range(k), classes, rotation=60, fontsize=6)
        ax.set_yticks(range(k), classes, fontsize=6)
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supxlabel("predicted (green correct, blue ambiguity, orange Type I, red Type II)", fontsize=7)
    fig.supylabel("true", fontsize=7)
    return _save(fig, path)


def plot_decision_curves(curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Net benefit against the threshold probability for each run (with its bootstrap band when present), and
    the refer-all / refer-none references of the first curve's data."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    first = next(iter(curves.values()))
    pt = np.asarray(first["pt"])
    for label, c in curves.items():
        x = np.asarray(c["pt"])
        (line,) = ax.plot(x, c["model"], lw=1.8, label=label)
        if "model_low" in c:
            ax.fill_between(x, c["model_low"], c["model_high"], color=line.get_color(), alpha=0.15, lw=0)
    ax.plot(pt, first["refer_all"], color="0.35", ls="--", lw=1.2, label="refer all")
    ax.axhline(0.0, color="0.1", lw=1.0, label="refer none")
    top = max(max(c["model"]) for c in curves.values())
    ax.set_ylim(min(-0.02, -0.25 * abs(top)), max(top, first["prevalence"]) * 1.15 + 1e-3)
    ax.set_xlabel("threshold probability pt (cost of a referral / (cost of a referral + cost of a miss))")
    ax.set_ylabel("net benefit (true referrals per case)")
    ax.set_title(title or "Decision curve")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.25)
    return _save(fig, path)


def plot_dice_vs_missed(table, path: str | Path, title: str = "") -> Path:
    """Dice (y) against the missed share of the lesion (x, lower is safer) per loss: hollow at the 0.5 rule,
    filled at the calibrated pixel threshold, an arrow from one to the other."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (_, r) in enumerate(table.iterrows()):
        c = colours[k % len(colours)]
        ax.plot(100 * r["_missed"], r["_dice"], "o", mfc="none", color=c, ms=7)
        if "_missed_cal" in r and np.isfinite(r.get("_missed_cal", np.nan)):
            ax.plot(100 * r["_missed_cal"], r["_dice_cal"], "o", color=c, ms=7, label=r["method"])
            ax.annotate("", (100 * r["_missed_cal"], r["_dice_cal"]), (100 * r["_missed"], r["_dice"]),
                        arrowprops={"arrowstyle": "->", "color": c, "lw": 0.8})
        else:
            ax.plot([], [], "o", color=c, label=r["method"])
    ax.set_xlabel("missed share of the lesion (%)  [lower is safer]")
    ax.set_ylabel("Dice")
    ax.set_title(title or "Dice vs under-segmentation (hollow: 0.5; filled: calibrated)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


def plot_budget_frontier(fair, path: str | Path, title: str = "") -> Path:
    """Test specificity at a calibrated sensitivity (y, with its two-level CI) and AUROC of p(malignant) (right
    panel) against the training CPU minutes of each recipe (x, log scale), one marker per split seed: what a
    minute of training buys. ``fair``: rows of one data set, model set and target of the fair frontier table."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2))
    markers = "osD^v"
    for k, (split, part) in enumerate(fair.groupby("split seed")):
        for _, r in part.iterrows():
            lo, hi = (float(v) for v in str(r["test specificity CI"]).strip("[]*").split(","))
            x = max(float(r["training min (mean)"]), 1e-3)
            colour = "#d7301f" if r["missed target (seeds)"] * 2 >= r["seeds"] else "k"
            spec = r["test specificity"]
            axes[0].errorbar(x, spec, yerr=[[spec - lo], [hi - spec]], fmt=markers[k % len(markers)], color=colour,
                             ms=5, capsize=2, lw=0.8)
            axes[0].annotate(r["method"], (x, r["test specificity"]), textcoords="offset points", xytext=(4, 3),
                             fontsize=6)
            axes[1].plot(x, r["AUROC p(malignant)"], markers[k % len(markers)], color=colour, ms=5,
                         label=f"split seed {split}" if _ == part.index[0] else None)
    target = float(fair["target sensitivity"].iloc[0])
    axes[0].set_ylabel(f"test specificity at a calibrated {100 * target:g}% sensitivity")
    axes[1].set_ylabel("test AUROC of p(malignant)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training time per model (CPU minutes, mean over seeds)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, frameon=False)
    fig.suptitle((title or "What training time buys") + " (red: missed the target in most seeds)", fontsize=9)
    return _save(fig, path)
