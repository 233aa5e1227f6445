"""Images an export is verified and calibrated on: a dataset's splits, a folder of images, or synthetic
shapes when there is nothing else; all preprocessed by ``dsod.data.preprocess`` (as served)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .graph import ExportError


def default_image_source() -> Optional[Path]:
    """BCCD images of the shared data folder (``DSOD_SHARED_DATA`` or ../shared/data), if present."""
    env = os.environ.get("DSOD_SHARED_DATA")
    roots = [Path(env)] if env else []
    here = Path(__file__).resolve()
    roots += [here.parents[3] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for r in roots:
        p = r / "bccd" / "JPEGImages"
        if p.is_dir():
            return p
    return None


def load_batch(source: Optional[str], n: int, imgsz: int, seed: int = 0) -> Tuple[np.ndarray, str]:
    """Up to ``n`` preprocessed images (n, 3, S, S) float32 and a description of where they came from.
    Without a source: synthetic shapes (``dsod.data.synthetic``), clearly labelled as such."""
    from ..inference.sessions import list_images, preprocess_rgb, read_rgb

    src = source or default_image_source()
    if src is not None:
        files = spread(list_images(src), n)
        from ..data.images import ImageError

        try:
            batch = np.stack([preprocess_rgb(read_rgb(f), imgsz) for f in files])
        except ImageError as e:
            raise ExportError(str(e)) from None
        return batch, f"{len(files)} images from {src}"
    from ..data.synthetic import draw_image

    rng = np.random.default_rng(seed)
    imgs = [np.asarray(draw_image(rng, imgsz, 4)[0]) for _ in range(n)]
    return np.stack([preprocess_rgb(im, imgsz) for im in imgs]), f"{n} synthetic images (no data= given)"


def verify(wrapper: nn.Module, onnx_path: Path, batch: np.ndarray, threads: Optional[int] = None
           ) -> Dict[str, float]:
    """Max abs differences between eager and ONNX Runtime on ``batch`` (run as one dynamic batch)."""
    from ..inference.sessions import OrtSession

    det = OrtSession(onnx_path, threads=threads)
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(batch))
    out = det.run(batch)
    diffs = {"boxes": float(np.abs(out["boxes"] - ref[0].numpy()).max()),
             "scores": float(np.abs(out["scores"] - ref[1].numpy()).max())}
    if "selected" in out:
        a = {tuple(r) for r in out["selected"].tolist()}
        b = {tuple(r) for r in ref[2].tolist()}
        diffs["nms_agreement"] = len(a & b) / max(1, len(a | b))
    return diffs



def spread(items: Sequence, n: int) -> list:
    """At most ``n`` of ``items``, evenly spread over them (not the first n: files are often sorted by
    class or by source)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def records_batch(records: Sequence, n: int, imgsz: int) -> np.ndarray:
    """``n`` dataset records spread over the split, decoded and preprocessed (n, 3, S, S)."""
    from ..data.images import ImageError
    from ..inference.sessions import preprocess_rgb, read_rgb

    try:
        return np.stack([preprocess_rgb(read_rgb(r.path), imgsz) for r in spread(records, n)])
    except ImageError as e:
        raise ExportError(str(e)) from None
