"""``check(data, ...)``: what is in a dataset, what is wrong with it, and how well a model's default
boxes can cover its objects -- before spending days training (``dsod data check data=... model=...``).

Default-box coverage: ground-truth boxes are warp-resized like the training input (normalised by the
image's width and height) and compared with default boxes; a box whose best IoU with any default box
is below 0.5 can only become a positive through SSD's bipartite step (ORIGINAL.md §1.6), i.e. with one
poorly fitting default box. A high share means the anchors (sizes, aspect ratios, input size) do not
suit the data.

The default boxes come from the caller as ``DefaultBoxSet``s (the CLI passes a preset's and the ones
fitted to the data, ``dsod.model.anchor_fit``): the data layer does not import the model layer.
Unlike the rest of ``dsod.data`` this module imports matplotlib (lazily, for the plots).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .images import ImageError, load_image
from .records import ImageRecord
from .spec import DatasetError, DatasetSpec, load_dataset

IOU_THRESHOLD = 0.5  # ORIGINAL.md §1.6 matching threshold


def _percentiles(v: np.ndarray) -> Dict[str, float]:
    if len(v) == 0:
        return {}
    q = np.percentile(v, [0, 5, 50, 95, 100])
    return dict(zip(("min", "p5", "median", "p95", "max"), (float(x) for x in q)))


@dataclass(frozen=True)
class DefaultBoxSet:
    """Default boxes to measure coverage against, made by the caller (e.g. from a model preset)."""

    label: str  # how the report names them: "dsod300 (preset)", "dsod300 (fitted to the data)"
    image_size: int  # the square network input they belong to
    boxes: torch.Tensor  # (A, 4) xyxy normalised to the input
    note: str = ""  # one line shown under the header, e.g. how they were fitted


def normalised_boxes(records: Sequence[ImageRecord]) -> torch.Tensor:
    """The non-crowd boxes of ``records`` (in order), (N, 4) xyxy normalised by each image's width and
    height: the box at the square warp-resized input. What the coverage and the anchor fit measure."""
    parts = [r.boxes[~r.iscrowd].astype(np.float32) / np.array([r.width, r.height] * 2, np.float32)
             for r in records]
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, 4)


def unmatched_mask(records: Sequence[ImageRecord], anchors_xyxy: torch.Tensor,
                   threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Per non-crowd box of ``records`` (in order): True when no default box has IoU >= threshold."""
    from torchvision.ops import box_iou

    boxes = normalised_boxes(records)
    # one IoU matrix per chunk of boxes, not per image: the cost is the (boxes x anchors) product
    out = [(box_iou(chunk, anchors_xyxy).amax(dim=1) < threshold).numpy() for chunk in boxes.split(2048)]
    return np.concatenate(out) if out else np.zeros(0, bool)


def _split_stats(records: List[ImageRecord], names: Sequence[str], box_sets: Sequence[DefaultBoxSet]
                 ) -> Dict[str, Any]:
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, np.int64)
    crowd = np.concatenate([r.iscrowd for r in records]) if records else np.zeros(0, bool)
    boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), np.float32)
    sizes = np.concatenate([np.tile([r.width, r.height], (len(r.boxes), 1)) for r in records]) \
        if records else np.zeros((0, 2))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    per_class = Counter(labels.tolist())
    per_class_images = Counter(int(c) for r in records for c in set(r.labels.tolist()))
    s: Dict[str, Any] = {
        "images": len(records),
        "boxes": int(len(boxes)),
        "images_without_boxes": sum(1 for r in records if len(r.boxes) == 0),
        "crowd_boxes": int(crowd.sum()),
        "difficult_boxes": int(sum(int(r.difficult.sum()) for r in records)),
        "class_counts": {n: int(per_class.get(i, 0)) for i, n in enumerate(names)},
        "class_images": {n: int(per_class_images.get(i, 0)) for i, n in enumerate(names)},
        "box_size": {
            "width_px": _percentiles(w), "height_px": _percentiles(h),
            "width_frac": _percentiles(w / np.maximum(sizes[:, 0], 1)) if len(w) else {},
            "height_frac": _percentiles(h / np.maximum(sizes[:, 1], 1)) if len(h) else {},
        },
        "image_sizes": dict(Counter(f"{r.width}x{r.height}" for r in records).most_common(5)),
    }
    nc_labels = labels[~crowd]
    cov = []
    for bs in box_sets:
        um = unmatched_mask(records, bs.boxes)
        cov.append({"unmatched_boxes": int(um.sum()), "unmatched_share": float(um.mean()) if len(um) else 0.0,
                    "unmatched_by_class": {n: float(um[nc_labels == i].mean()) for i, n in enumerate(names)
                                           if (nc_labels == i).any()}})
    if cov:
        s["coverage"] = cov  # one entry per default-box set, in order
        s.update(cov[0])  # the first set's also at the top level (the preset's, with the CLI)
        image_size = box_sets[0].image_size
        s["box_size"]["width_input_px"] = _percentiles(w / np.maximum(sizes[:, 0], 1) * image_size)
        s["box_size"]["height_input_px"] = _percentiles(h / np.maximum(sizes[:, 1], 1) * image_size)
    return s


def _plot_labels(stats: Dict[str, Any], records: List[ImageRecord], names: Sequence[str], title: str,
                 path: Path) -> None:
    # Figure, not pyplot: saving needs no backend, so checking data never switches the caller's
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(12, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    counts = [stats["class_counts"][n] for n in names]
    ax1.bar(range(len(names)), counts, color="tab:blue")
    ax1.set_xticks(range(len(names)))
    ax1.set_xticklabels(names, rotation=90 if len(names) > 8 else 0, fontsize=8 if len(names) > 20 else 10)
    ax1.set_ylabel("boxes")
    ax1.set_title(f"{title}: boxes per class")
    wf, hf, lab = [], [], []
    for r in records:
        keep = ~r.iscrowd
        if keep.any():
            b = r.boxes[keep]
            wf.append((b[:, 2] - b[:, 0]) / r.width)
            hf.append((b[:, 3] - b[:, 1]) / r.height)
            lab.append(r.labels[keep])
    if wf:
        wf, hf, lab = np.concatenate(wf), np.concatenate(hf), np.concatenate(lab)
        sc = ax2.scatter(wf, hf, c=lab, cmap="tab20", s=6, alpha=0.5, vmin=0, vmax=max(len(names) - 1, 1))
        if len(names) <= 20:
            handles = [Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i)), label=n)
                       for i, n in enumerate(names)]
            ax2.legend(handles=handles, fontsize=7, loc="upper left")
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("box width / image width")
    ax2.set_ylabel("box height / image height")
    ax2.set_title("box sizes (warp-resize keeps these fractions)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _plot_samples(records: List[ImageRecord], names: Sequence[str], image_size: int, n: int, seed: int,
                  path: Path) -> None:
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .dataset import DetectionDataset
    from .transforms import denormalize, train_transform

    ds = DetectionDataset(records, train_transform(image_size), train=True)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(records), generator=g)[:n].tolist()
    cols = math.ceil(math.sqrt(len(order)))
    rows = math.ceil(len(order) / cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    colours = matplotlib.colormaps["tab20"]
    for k, idx in enumerate(order):
        image, target = ds[(idx, seed + k)]
        ax = axes.flat[k]
        ax.imshow(denormalize(image).permute(1, 2, 0).numpy())
        for b, lab in zip((target["boxes"] * image_size).tolist(), target["labels"].tolist()):
            c = colours(lab % 20)
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.2, color=c))
            ax.text(b[0], b[1], names[lab] if lab < len(names) else str(lab), fontsize=6, color="white",
                    bbox=dict(facecolor=c, lw=0, pad=0.5), va="bottom")
        ax.set_title(f"{Path(str(records[target['index']].path)).name}", fontsize=7)
    fig.suptitle(f"augmented training samples ({image_size}x{image_size}, seed {seed})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def check(data: Union[str, Path, DatasetSpec], default_boxes: Sequence[DefaultBoxSet] = (),
          out_dir: Optional[Union[str, Path]] = None, samples: int = 0, strict: bool = False,
          decode: bool = True, seed: int = 0) -> Dict[str, Any]:
    """Read every split of ``data`` (a path, or a spec the caller already loaded), decode every image
    (``decode``; finds truncated files a header read cannot), gather statistics and problems, measure
    each of ``default_boxes``' coverage; write plots to ``out_dir`` (if given).

    Returns a dict with keys
    - ``data``, ``format``, ``root``, ``names``, ``category_ids`` (COCO) -- the dataset;
    - ``notes``: dataset-level notes (path fallbacks, class names collected from the data ...);
    - ``default_boxes``: per set ``label``, ``image_size``, ``count``, ``note``; ``image_size`` and
      ``num_default_boxes``: the first set's (None without sets);
    - ``splits``: ``{split: {...}}`` with ``images``, ``boxes``, ``images_without_boxes``, ``crowd_boxes``,
      ``difficult_boxes``, ``class_counts`` / ``class_images`` ({name: n}), ``box_size`` (min/p5/median/
      p95/max of box width/height in original pixels, as image fractions and, with default boxes, in input
      pixels), ``image_sizes`` (5 most common), ``coverage`` (per default-box set: ``unmatched_boxes`` /
      ``unmatched_share`` / ``unmatched_by_class``, the non-crowd boxes whose best IoU with a default box
      is < 0.5; the first set's also at the top level),
      ``problems`` ("file: reason" lines), ``problem_counts`` ({kind: n}), ``notes``, ``stats`` (reader
      counters), ``error`` (the split could not be read at all; other keys then absent), ``plot``;
    - ``problems_total``: problems over all splits; ``samples_plot``: the augmented-sample grid or None.

    ``strict=True`` raises ``DatasetError`` at the first problem instead of collecting problems.
    """
    spec = data if isinstance(data, DatasetSpec) else load_dataset(data, strict=strict)
    info = spec.info
    out_dir = Path(out_dir) if out_dir is not None else None
    sets = list(default_boxes)
    image_size = sets[0].image_size if sets else None
    result: Dict[str, Any] = {
        "data": str(spec.data if isinstance(data, DatasetSpec) else data), "format": info.format,
        "root": str(info.root), "names": list(info.names), "category_ids": info.category_ids,
        "notes": list(spec.notes),
        "default_boxes": [{"label": b.label, "image_size": b.image_size, "count": int(len(b.boxes)),
                           "note": b.note} for b in sets],
        "image_size": image_size, "num_default_boxes": int(len(sets[0].boxes)) if sets else None,
        "splits": {}, "samples_plot": None,
    }
    decoded: Dict[Path, Optional[str]] = {}  # path -> reason it failed, shared across splits (trainval)
    usable_by_split: Dict[str, List[ImageRecord]] = {}
    for split in spec.splits:
        try:
            records = spec.records(split)
        except DatasetError as e:
            if strict:
                raise
            result["splits"][split] = {"error": str(e), "problems": [str(e)],
                                       "problem_counts": {"unreadable split": 1},
                                       "notes": list(spec.report(split).notes)}
            continue
        rep = spec.report(split)
        usable = []
        for r in records:
            if decode:
                if r.path not in decoded:
                    try:
                        load_image(r.path, spec.max_pixels)
                        decoded[r.path] = None
                    except ImageError as e:
                        decoded[r.path] = str(e)
                if decoded[r.path] is not None:
                    rep.problem(r.path, f"{decoded[r.path]}; image skipped", "unusable image")
                    continue
            usable.append(r)
        usable_by_split[split] = usable
        s = _split_stats(usable, info.names, sets)
        s.update(problems=list(rep.problems), problem_counts=dict(rep.counts), notes=list(rep.notes),
                 stats=dict(rep.stats), error=None, plot=None)
        if out_dir is not None:
            path = out_dir / f"labels_{split}.png"
            _plot_labels(s, usable, info.names, split, path)
            s["plot"] = str(path)
        result["splits"][split] = s
    # counts, not lines: a problem repeated in many files is one summarised line (SplitReport)
    result["problems_total"] = sum(sum(s["problem_counts"].values()) for s in result["splits"].values())
    if samples > 0 and out_dir is not None:
        split = "train" if usable_by_split.get("train") else \
            next((k for k, v in usable_by_split.items() if v), None)
        if split is not None:
            path = out_dir / f"{split}_samples.png"
            _plot_samples(usable_by_split[split], info.names, image_size or 300, samples, seed, path)
            result["samples_plot"] = str(path)
    return result


def _fmt_pct(d: Dict[str, float], unit: str = "") -> str:
    if not d:
        return "-"
    return " / ".join(f"{d[k]:.3g}" for k in ("min", "p5", "median", "p95", "max")) + unit


def format_report(result: Dict[str, Any]) -> str:
    """Human-readable text of a ``check`` result (every problem listed, with file and reason)."""
    names = result["names"]
    lines = [f"data={result['data']}: {result['format']}, {len(names)} classes, root {result['root']}"]
    if result.get("category_ids") is not None:
        ids = ", ".join(f"{n}={c}" for n, c in zip(names, result["category_ids"]))
        lines.append(f"  category ids: {ids}")
    for b in result.get("default_boxes", []):
        lines.append(f"default boxes {b['label']}: {b['image_size']}x{b['image_size']} input, {b['count']:,} boxes")
        if b["note"]:
            lines.append(f"  {b['note']}")
    for n in result.get("notes", []):
        lines.append(f"  note: {n}")
    for split, s in result["splits"].items():
        lines.append("")
        if s.get("error"):
            lines.append(f"[{split}] UNREADABLE: {s['error']}")
            continue
        lines.append(f"[{split}] {s['images']} images, {s['boxes']} boxes, {s['images_without_boxes']} "
                     f"images without boxes, {s['crowd_boxes']} crowd, {s['difficult_boxes']} difficult")
        width = max([len(n) for n in names] + [5])
        cov = s.get("coverage", [])
        labels = [b["label"] for b in result.get("default_boxes", [])]
        header = f"  {'class':<{width}}  {'boxes':>7}  {'images':>6}"
        if cov:  # one column per default-box set: the share of the class's boxes without a match
            header += "  no default box IoU>=0.5: " + " | ".join(labels)
        lines.append(header)
        for n in names:
            row = f"  {n:<{width}}  {s['class_counts'][n]:>7}  {s['class_images'][n]:>6}"
            if cov and n in cov[0]["unmatched_by_class"]:
                row += "  " + "  ".join(f"{100 * c['unmatched_by_class'][n]:>6.1f}%" for c in cov)
            lines.append(row)
        bs = s["box_size"]
        for side in ("width", "height"):
            net = f"  (input px: {_fmt_pct(bs[side + '_input_px'])})" if side + "_input_px" in bs else ""
            lines.append(f"  box {side:<6} px min/p5/median/p95/max: {_fmt_pct(bs[side + '_px'])}{net}")
        lines.append("  image sizes: " + ", ".join(f"{k} ({v})" for k, v in s["image_sizes"].items()))
        n_nc = s["boxes"] - s["crowd_boxes"]
        for label, c in zip(labels, cov):
            lines.append(f"  default-box coverage ({label}): {c['unmatched_boxes']} of {n_nc} boxes "
                         f"({100 * c['unmatched_share']:.1f}%) match no default box at IoU >= {IOU_THRESHOLD}")
        shown = ("images", "boxes", "difficult boxes", "crowd boxes", "images without boxes")
        stats = {k: v for k, v in s.get("stats", {}).items() if k not in shown and v}
        if stats:
            lines.append("  counts: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
        if s["problems"]:
            counts = sorted(s["problem_counts"].items(), key=lambda kv: -kv[1])
            kinds = ", ".join(f"{n} {k}" for k, n in counts)
            lines.append(f"  problems: {sum(s['problem_counts'].values())} ({kinds})")
            lines.extend(f"    {p}" for p in s["problems"])
        else:
            lines.append("  problems: none")
        for n in s.get("notes", []):
            lines.append(f"  note: {n}")
        if s.get("plot"):
            lines.append(f"  plot: {s['plot']}")
    if result.get("samples_plot"):
        lines.append(f"\naugmented samples: {result['samples_plot']}")
    lines.append(f"\n{result['problems_total']} problem(s) in total")
    return "\n".join(lines)
