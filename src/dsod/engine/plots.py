"""Pictures of a run: learning curves, a training batch with its boxes, validation predictions.

Drawn on ``matplotlib.figure.Figure`` objects, not pyplot: saving needs no backend, so a library call
never switches the process's backend (``matplotlib.use``) under a notebook or GUI that imported us."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from ..config import PIXEL_MEAN_BGR
from ..files import atomic_path


def _figure(rows: int, cols: int, figsize):
    # imported here, not at the top: only runs that draw pictures pay for importing matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def to_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """Network input (3, H, W) BGR minus mean -> (H, W, 3) RGB uint8."""
    arr = image.detach().cpu().float().permute(1, 2, 0).numpy() + np.array(PIXEL_MEAN_BGR, dtype=np.float32)
    return np.clip(arr[:, :, ::-1], 0, 255).astype(np.uint8)


def _draw(ax, img: np.ndarray, boxes: np.ndarray, labels: Sequence[int], names: Sequence[str],
          scores: Sequence[float] | None = None) -> None:
    import matplotlib
    from matplotlib.patches import Rectangle

    ax.imshow(img)
    cmap = matplotlib.colormaps["tab20"]
    for i, (b, l) in enumerate(zip(boxes, labels)):
        colour = cmap(int(l) % 20)
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.2, color=colour))
        text = names[int(l)] if int(l) < len(names) else str(int(l))
        if scores is not None:
            text += f" {scores[i]:.2f}"
        ax.text(b[0], b[1], text, fontsize=6, color="white", bbox=dict(facecolor=colour, lw=0, pad=0.5))
    ax.axis("off")


def _image_grid(images: torch.Tensor, boxes: List[torch.Tensor], labels: List[torch.Tensor], names: Sequence[str],
                path: Path, cols: int, scores: List[torch.Tensor] | None = None) -> None:
    """One panel per network-input image with its boxes (xyxy normalised to the input)."""
    n = len(images)
    rows = int(np.ceil(n / cols))
    fig, axes = _figure(rows, cols, (3 * cols, 3 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        img = to_rgb_uint8(images[i])
        h, w = img.shape[:2]
        px = boxes[i].cpu().numpy() * np.array([w, h, w, h])
        _draw(axes.flat[i], img, px, labels[i].tolist(), names, None if scores is None else scores[i].tolist())
    _save(fig, Path(path))


def plot_batch(images: torch.Tensor, targets: List[dict], names: Sequence[str], path: Path, max_images: int = 16):
    n = min(len(images), max_images)
    _image_grid(images[:n], [t["boxes"] for t in targets[:n]], [t["labels"] for t in targets[:n]], names, path,
                cols=int(np.ceil(np.sqrt(n))))


@torch.no_grad()
def plot_predictions(model, loader, postprocessor, names, path: Path, device, max_images: int = 8,
                     conf: float = 0.4):
    images, _ = next(iter(loader))
    images = images[:max_images]
    was = model.training
    model.eval()
    out = model(images.to(device))
    model.train(was)
    dets = postprocessor(out.bbox_regression.float(), out.cls_logits.float(), model.anchors_cxcywh)
    keep = [d["scores"] >= conf for d in dets]
    _image_grid(images, [d["boxes"][k] for d, k in zip(dets, keep)], [d["labels"][k] for d, k in zip(dets, keep)],
                names, path, cols=min(4, len(images)), scores=[d["scores"][k] for d, k in zip(dets, keep)])


def plot_results(csv_path: Path, out_path: Path) -> None:
    """Loss parts, learning rate and mAP against iterations, from results.csv."""
    if not Path(csv_path).exists():
        return
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    it = [float(r["iteration"]) for r in rows]

    def col(k):
        return [float(r[k]) if r.get(k) not in (None, "", "nan") else np.nan for r in rows]

    fig, axes = _figure(1, 3, (13, 3.5))
    axes = axes[0]
    for k in ("loss", "loss_loc", "loss_conf"):
        if k in rows[0]:
            axes[0].plot(it, col(k), marker=".", label=k)
    axes[0].set_title("training loss")
    axes[0].legend()
    axes[1].plot(it, col("lr"), marker=".")
    axes[1].set_title("learning rate")
    for k, label in (("voc07_map50", "mAP@0.5 VOC07 11-pt"), ("voc_area_map50", "mAP@0.5 area"),
                     ("coco_ap", "COCO AP")):
        if k in rows[0]:
            axes[2].plot(it, col(k), marker="o", label=label)
    axes[2].set_title("validation")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    _save(fig, Path(out_path))
