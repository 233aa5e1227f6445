"""PNG plots of an evaluation: precision-recall curves per class and a confusion matrix.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so plotting
works headless and does not disturb an interactive session.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence

import numpy as np

from .voc import VOCResult


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def _fmt(v: float) -> str:
    return "n/a" if np.isnan(v) else f"{v:.3f}"


def _envelope(prec: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec


def plot_pr_curves(voc: VOCResult, names: Sequence[str], out_dir: Path, per_class_files: bool = True,
                   iou_thresh: float = 0.5) -> List[Path]:
    """``pr_curves.png``: every class's interpolated PR curve (VOC matching at ``iou_thresh``) and,
    with ``per_class_files``, ``pr_curves/NNN_<name>.png``: raw and interpolated curve of one class."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig = _figure(8, 6)
    ax = fig.add_subplot(1, 1, 1)
    show_legend = len(names) <= 20
    for c, name in enumerate(names):
        rec, prec = voc.recall[c], voc.precision[c]
        if voc.num_gt[c] == 0:
            continue
        r = np.concatenate(([0.0], rec, [rec[-1] if len(rec) else 0.0]))
        p = np.concatenate(([_envelope(prec)[0] if len(prec) else 0.0], _envelope(prec), [0.0]))
        ax.plot(r, p, lw=1, drawstyle="steps-pre", label=f"{name} {_fmt(voc.ap_area[c])}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_title(f"PR curves, VOC matching IoU {iou_thresh:g}: mean AP50 all-point (VOC2010+) = "
                 f"{_fmt(voc.map_area)}, 11-point (VOC2007) = {_fmt(voc.map07)}", fontsize=9)
    ax.grid(alpha=0.3)
    if show_legend:
        ax.legend(fontsize=7, loc="lower left", title="class, AP50 all-point", title_fontsize=7)
    path = out_dir / "pr_curves.png"
    fig.savefig(path)
    paths.append(path)

    if per_class_files:
        sub = out_dir / "pr_curves"
        sub.mkdir(exist_ok=True)
        for c, name in enumerate(names):
            fig = _figure(5, 4)
            ax = fig.add_subplot(1, 1, 1)
            rec, prec = voc.recall[c], voc.precision[c]
            if voc.num_gt[c] and len(rec):
                ax.plot(rec, prec, lw=1, color="0.6", label="precision")
                ax.plot(np.r_[0.0, rec], np.r_[_envelope(prec)[0], _envelope(prec)], lw=1.5, color="C0", drawstyle="steps-pre",
                        label="interpolated (envelope)")
                ax.legend(fontsize=7, loc="lower left")
            elif voc.num_gt[c] == 0:
                ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
            else:
                ax.text(0.5, 0.5, "no detections", ha="center", va="center")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title(f"{name}: AP50 all-point (VOC2010+) {_fmt(voc.ap_area[c])}, 11-point (VOC2007) "
                         f"{_fmt(voc.ap07[c])}\n{int(voc.num_gt[c])} ground truths, {int(voc.num_det[c])} detections",
                         fontsize=8)
            ax.grid(alpha=0.3)
            path = sub / f"{c:03d}_{_safe(name)}.png"
            fig.savefig(path)
            paths.append(path)
    return paths


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: Path, conf_thresh: float = 0.25,
                          iou_thresh: float = 0.5) -> Path:
    """Counts of (predicted, true) class with a background row and column; colours are normalised per
    true class (column), so each ground-truth class shows where its objects went."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = list(names) + ["background"]
    n = len(labels)
    size = min(4 + 0.35 * n, 30)
    fig = _figure(size, size * 0.9)
    ax = fig.add_subplot(1, 1, 1)
    m = np.asarray(matrix, np.float64)
    col = m.sum(0, keepdims=True)
    norm = np.divide(m, col, out=np.zeros_like(m), where=col > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class (column)")
    fs = 8 if n <= 12 else 6 if n <= 30 else 4
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=fs,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"confusion matrix (score >= {conf_thresh:g}, IoU >= {iou_thresh:g})\n"
                 "background column: false positives; background row: missed objects", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
