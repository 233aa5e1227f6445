"""Inference on images: the Python API (``Detector``) behind ``dsod predict``.

    from dsod.predict import Detector
    det = Detector.load("runs/train/weights/best.pt")
    results = det.predict("image.jpg")          # or a folder, a glob, a PIL image, an RGB uint8 array
    results[0]["boxes"], results[0]["scores"], results[0]["names"]

Boxes are xyxy in the original image's pixels (the warp-resize is undone), for any image size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .data.images import ImageError, find_images
from .onnx_backend import preprocess_rgb
from .onnx_backend import read_rgb as onnx_read_rgb
from .postprocess import PostProcessor

Source = Union[str, Path, np.ndarray, Image.Image]


class PredictError(Exception):
    pass


def resolve_source(source: Union[str, Path]) -> List[Path]:
    """A file, a folder (its images, sorted; a VOC root: its JPEGImages) or a glob -> image paths."""
    try:
        return find_images(source)
    except FileNotFoundError as e:
        raise PredictError(f"source={e}") from None


def read_rgb(path: Path) -> np.ndarray:
    """Decode to RGB uint8 with EXIF orientation applied (the ONNX backend's reader, the same decoder
    as training); one-line error naming the file for unusable files."""
    try:
        return onnx_read_rgb(path)
    except ImageError as e:
        raise PredictError(str(e)) from None


def preprocess(rgb: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> network input (3, size, size): warp-resize (bilinear), BGR, minus the
    mean (spec §1.7 test transform; the same function as the ONNX backend's)."""
    return torch.from_numpy(preprocess_rgb(rgb, size))


class Detector:
    """A trained DSOD ready for inference (torch eager, or an exported ONNX model)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str], image_size: int,
                 category_ids: Optional[Sequence[int]] = None, device: Union[str, torch.device] = "cpu",
                 conf: float = 0.25, iou: float = 0.45, max_det: int = 200):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.names = list(names)
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.image_size = image_size
        self.conf = conf
        # Thresholding at ``conf`` before NMS gives the same boxes above ``conf`` as thresholding after
        # (only a higher-scoring box can suppress another), and is faster.
        variances = model.config.anchors.variances if getattr(model, "config", None) else (0.1, 0.2)
        self.postprocessor = PostProcessor(score_thresh=conf, nms_thresh=iou, detections_per_img=max_det,
                                           variances=variances)

    @classmethod
    def load(cls, path: Union[str, Path], device: str = "cpu", **kwargs) -> "Detector":
        from .engine.checkpoint import build_from_checkpoint, load_checkpoint

        ckpt = load_checkpoint(path)
        model, cfg = build_from_checkpoint(ckpt)
        return cls(model, ckpt["names"], cfg.image_size, ckpt.get("category_ids"), device=device, **kwargs)

    @torch.no_grad()
    def predict_arrays(self, images: Sequence[np.ndarray], batch: int = 8) -> List[Dict[str, Any]]:
        results: List[Dict[str, Any]] = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            x = torch.stack([preprocess(im, self.image_size) for im in chunk]).to(self.device)
            out = self.model(x)
            sizes = [im.shape[:2] for im in chunk]
            dets = self.postprocessor(out.bbox_regression.float(), out.cls_logits.float(),
                                      self.model.anchors_cxcywh, image_sizes=sizes)
            for d in dets:
                d = {k: v.cpu() for k, v in d.items()}
                d["names"] = [self.names[int(l)] for l in d["labels"]]
                results.append(d)
        return results

    def predict(self, source: Union[Source, Iterable[Source]], batch: int = 8) -> List[Dict[str, Any]]:
        """One result per image: ``boxes`` (K, 4) xyxy original pixels, ``scores``, ``labels``
        (index in ``names``), ``names``, plus ``path``/``image_id`` for files."""
        items = source if isinstance(source, (list, tuple)) else [source]
        arrays, meta = [], []
        for item in items:
            if isinstance(item, np.ndarray):
                if item.ndim != 3 or item.shape[2] != 3:
                    raise PredictError(f"array of shape {item.shape}: expected (H, W, 3) RGB uint8")
                arrays.append(item.astype(np.uint8, copy=False))
                meta.append({"path": None, "image_id": len(meta)})
            elif isinstance(item, Image.Image):
                arrays.append(np.asarray(ImageOps.exif_transpose(item).convert("RGB")))
                meta.append({"path": None, "image_id": len(meta)})
            else:
                for p in resolve_source(item):
                    arrays.append(read_rgb(p))
                    meta.append({"path": str(p), "image_id": p.stem})
        results = self.predict_arrays(arrays, batch)
        for r, m in zip(results, meta):
            r.update(m)
        return results


class OnnxRuntimeDetector(Detector):
    """``Detector`` on a model written by ``dsod export`` (ONNX Runtime; fp32 or int8): same
    ``predict`` API and outputs, the network and decoding run in ONNX Runtime."""

    def __init__(self, path: Union[str, Path], conf: float = 0.25, iou: float = 0.45, max_det: int = 200):
        from .onnx_backend import OnnxDetector

        try:
            self.session = OnnxDetector(path, conf=conf, iou=iou, max_det=max_det)
        except FileNotFoundError as e:
            raise PredictError(str(e)) from None
        self.names = self.session.names
        ids = self.session.metadata.get("category_ids")
        self.category_ids = list(ids) if ids else None
        self.image_size = self.session.image_size
        self.conf = conf

    def predict_arrays(self, images: Sequence[np.ndarray], batch: int = 8) -> List[Dict[str, Any]]:
        return self.session.detect(images, batch)


def draw_detections(rgb: np.ndarray, result: Dict[str, Any], path: Path) -> None:
    """Write the image with its boxes, class names and scores (JPEG/PNG by suffix), atomically."""
    import os

    from PIL import ImageDraw

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
    width = max(1, round(max(img.size) / 300))
    for box, label, name, score in zip(result["boxes"].tolist(), result["labels"].tolist(), result["names"],
                                       result["scores"].tolist()):
        colour = palette[int(label) % len(palette)]
        draw.rectangle(box, outline=colour, width=width)
        text = f"{name} {score:.2f}"
        tb = draw.textbbox((box[0], box[1]), text)
        draw.rectangle((tb[0], tb[1] - 1, tb[2] + 2, tb[3] + 1), fill=colour)
        draw.text((box[0] + 1, box[1]), text, fill=(255, 255, 255))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    img.save(tmp)
    os.replace(tmp, path)
