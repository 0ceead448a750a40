"""Figures of a run: confusion matrix, predicted severity per true class, training curves, lr_find.

Each function takes plain arrays and writes one PNG atomically; nothing here trains or loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from herlev_fa.atomic import save_figure  # noqa: E402
from herlev_fa.labels import short_name  # noqa: E402


def _short(names: Sequence[str]) -> list[str]:
    return [short_name(n) for n in names]


def confusion_matrix_png(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix [K, K] (rows true, columns predicted) with counts and row-normalised colour."""
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2.5, 1.0 * len(classes) + 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ConfusionMatrixDisplay(norm, display_labels=_short(classes)).plot(ax=ax, cmap="Blues", values_format=".2f", colorbar=False)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i + 0.3, f"n={n}", ha="center", va="center", fontsize=7, color="grey")
    ax.set_title(title or "confusion matrix (row-normalised)")
    return save_figure(fig, path)


def score_distribution_png(score: np.ndarray, y: np.ndarray, classes: Sequence[str], severities: Sequence[float],
                           path: str | Path, title: str = "") -> Path:
    """Predicted severity score [N] per true class [N] (box + points), true severity as a line."""
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 4))
    groups = [np.asarray(score)[np.asarray(y) == k] for k in range(len(classes))]
    ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=range(len(classes)), widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for k, g in enumerate(groups):
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(g)), g, s=8, alpha=0.5)
        ax.hlines(severities[k], k - 0.3, k + 0.3, colors="red", linestyles="--", linewidth=1)
    ax.set_xticks(range(len(classes)), _short(classes), rotation=30)
    ax.set_ylabel("predicted severity score")
    ax.set_title(title or "predicted severity per true class (red: true severity)")
    return save_figure(fig, path)


def training_curves_png(log: pd.DataFrame, path: str | Path) -> Path:
    """Train/valid loss and validation accuracy per epoch, from the run's log.csv."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for col in ("train_loss", "valid_loss"):
        if col in log:
            a.plot(log["epoch"], log[col], marker="o", label=col)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    for col in ("accuracy", "binary_accuracy"):
        if col in log:
            b.plot(log["epoch"], log[col], marker="o", label=col)
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.legend()
    return save_figure(fig, path)


def lr_find_png(lrs: Sequence[float], losses: Sequence[float], suggestion: float, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(lrs, losses)
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_ylabel("loss")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2e}")
    ax.legend()
    return save_figure(fig, path)


# --- screening and calibration figures (issue 13): matplotlib's object API, no pyplot state ---

def roc_png(is_abnormal: np.ndarray, abnormal_score: np.ndarray, points: dict[str, float], path: str | Path,
            title: str = "") -> Path:
    """ROC of normal vs abnormal (scikit-learn's curve) with the screening operating points marked.

    Args:
        is_abnormal: truth [N]; abnormal_score: P(abnormal) or the severity score [N].
        points: `herlev_fa.metrics.operating_points` of the same cells.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import auc, roc_curve

    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.add_subplot()
    truth = np.asarray(is_abnormal, bool)
    if truth.all() or not truth.any():
        ax.text(0.5, 0.5, "one group only: no ROC curve", ha="center", va="center")
    else:
        fpr, tpr, _ = roc_curve(truth, abnormal_score)
        ax.plot(fpr, tpr, color="tab:blue", label=f"ROC (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    sens, spec = points["sensitivity"], points["specificity"]
    sens95, spec95 = points["sens_at_spec95"], points["spec_at_sens95"]
    marks = [  # where the curve crosses spec = 0.95 and sens = 0.95: on the curve, as the metrics read it
        (f"default decision: sens {sens:.2f}, spec {spec:.2f}", 1 - spec, sens, "o"),
        (f"sens {sens95:.2f} at spec ≥ 0.95", 0.05, sens95, "s"),
        (f"spec {spec95:.2f} at sens ≥ 0.95", 1 - spec95, 0.95, "^"),
    ]
    for label, x, y, marker in marks:
        if not (np.isnan(x) or np.isnan(y)):
            ax.plot([x], [y], marker=marker, linestyle="none", markersize=8, label=label)
    ax.set_xlabel("1 - specificity (normal cells called abnormal)")
    ax.set_ylabel("sensitivity (abnormal cells found)")
    ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when only one group is present
        ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or "normal vs abnormal", fontsize=9)
    return save_figure(fig, path)


def reliability_png(probs: np.ndarray, y: np.ndarray, ece: float, path: str | Path, n_bins: int = 10,
                    title: str = "") -> Path:
    """Reliability diagram of the top class probability [N, K] against the true class [N] (scikit-learn's bins)."""
    from matplotlib.figure import Figure
    from sklearn.calibration import calibration_curve

    probs = np.asarray(probs)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y)  # [N], [N]
    fig = Figure(figsize=(4.6, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    # pos_label: all-right or all-wrong cells are a valid (if extreme) diagram
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform", pos_label=True)
    top.plot(mean_confidence, accuracy, marker="o", color="tab:blue", label=f"model (ECE {ece:.3f})")
    top.set_ylabel("accuracy in the bin"), top.set_ylim(-0.02, 1.02), top.legend(loc="upper left", fontsize=8)
    top.set_title(title or "reliability of the top class probability", fontsize=9)
    bottom.hist(confidence, bins=np.linspace(0, 1, n_bins + 1), color="tab:grey")
    bottom.set_xlabel("top class probability"), bottom.set_ylabel("cells")
    return save_figure(fig, path)
