"""Inference on images: the Python API (``Detector``) behind ``dsod predict``.

    from dsod.inference.predict import Detector
    det = Detector.load("runs/train/weights/best.pt")   # backend="auto": fastest lossless here (printed)
    results = det.predict("image.jpg")          # or a folder, a glob, a PIL image, an RGB uint8 array
    results[0]["boxes"], results[0]["scores"], results[0]["names"]

Boxes are xyxy in the original image's pixels (the warp-resize is undone), for any image size.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from ..data.images import ImageError, find_images
from ..data.preprocess import preprocess as _preprocess
from ..errors import DsodError
from ..files import atomic_path
from .postprocess.detection_output import PostProcessor
from .sessions import read_rgb as onnx_read_rgb

Source = Union[str, Path, np.ndarray, Image.Image]


class PredictError(DsodError):
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


def unique_ids(paths: Sequence[Path]) -> List[str]:
    """An image id per file that no other file of the run shares: the stem where it is unique (what a
    dataset's ids are, so that ``dsod val detections=`` matches them), else the path relative to the
    files' common folder, without the suffix where that is enough (``sub/a`` beside ``a``), with it
    otherwise (``a.jpg`` beside ``a.png``)."""
    if len({p.stem for p in paths}) == len(paths):
        return [p.stem for p in paths]
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    rel = [p.resolve().relative_to(root) for p in paths]
    bare = [r.with_suffix("").as_posix() for r in rel]
    return bare if len(set(bare)) == len(bare) else [r.as_posix() for r in rel]


def preprocess(rgb: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> network input (3, size, size): ``dsod.data.preprocess.preprocess``, the
    same pixels ``dsod val`` and the ONNX backend feed the network."""
    return _preprocess(rgb, size)


class Detector:
    """A trained DSOD ready for inference, on any backend (``dsod.inference.backends``): PyTorch eager or fused,
    or an exported ONNX file in ONNX Runtime (fp32 or int8). ``Detector.load`` chooses the backend.

    Args:
        runner: a ``dsod.inference.runners`` runner (preprocessed batch -> decoded boxes and scores).
        names, image_size, category_ids: the model's classes and input size.
        conf, iou, max_det: post-processing (``PostProcessor``).
    """

    def __init__(self, runner, names: Sequence[str], image_size: int, category_ids: Optional[Sequence[int]] = None,
                 conf: float = 0.25, iou: float = 0.45, max_det: int = 200, backend=None,
                 slice: str = "false", geometry: Optional[Dict[str, float]] = None):
        self.runner = runner
        self.names = list(names)
        self.category_ids = list(category_ids) if category_ids else None
        self.image_size = int(image_size)
        self.conf = conf
        self.backend = backend  # the BackendChoice, when ``load`` made it
        self.skipped: List[str] = []  # "file: reason" of the image files ``predict`` could not decode
        # sliced inference (``inference.slicing``): "auto", "false" or a tile size; the training images'
        # sizes the checkpoint records decide "auto"
        self.slice, self.geometry, self.log = str(slice), geometry, print
        # Thresholding at ``conf`` before NMS gives the same boxes above ``conf`` as thresholding after
        # (only a higher-scoring box can suppress another), and is faster.
        self.postprocessor = PostProcessor(score_thresh=conf, nms_thresh=iou, detections_per_img=max_det)

    @classmethod
    def load(cls, path: Union[str, Path], backend: str = "auto", device: str = "auto", data: Optional[str] = None,
             threads: Optional[int] = None, log=print, **kwargs) -> "Detector":
        """A checkpoint (.pt) or an exported model (.onnx) on the backend ``backend=`` names (``auto``:
        ``dsod.inference.backends.choose_backend``; the choice is printed through ``log``). ``data``: the dataset
        an int8 export is calibrated and checked on (default: the checkpoint's own)."""
        from ..model.checkpoint import CheckpointError
        from .backends import BackendError, choose_backend, open_runner

        try:
            choice = choose_backend(path, backend, device, data, log=log)
            model, names, size, ids, geometry = None, None, None, None, None
            if choice.name in ("torch", "fused"):
                from ..model.checkpoint import build_from_checkpoint, load_checkpoint

                ckpt = load_checkpoint(path)
                model, cfg = build_from_checkpoint(ckpt)
                names, size, ids = ckpt["names"], cfg.image_size, ckpt.get("category_ids")
                geometry = ckpt.get("train_geometry")
            runner = open_runner(choice, model, threads)
        except (BackendError, CheckpointError, FileNotFoundError) as e:
            raise PredictError(str(e)) from None
        if model is None:
            meta = runner.metadata
            names, size, ids = meta.get("names") or [], meta["image_size"], meta.get("category_ids")
            geometry = meta.get("train_geometry")
        log(choice.describe())
        return cls(runner, names, size, ids, backend=choice, geometry=geometry, **kwargs)

    def detect(self, x: torch.Tensor, image_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, Any]]:
        """A preprocessed batch (N, 3, S, S) -> one result per image (boxes in ``image_sizes`` pixels)."""
        return self._named(self.postprocessor.select(*self.runner(x), image_sizes))

    def _named(self, results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        for d in results:
            d["names"] = [self.names[int(l)] if int(l) < len(self.names) else str(int(l)) for l in d["labels"]]
        return results

    def predict_arrays(self, images: Sequence[np.ndarray], batch: int = 8) -> List[Dict[str, Any]]:
        if self.slice.lower() not in ("false", "no", "off", "0", "none"):
            from .slicing import sliced_detector

            detect = sliced_detector(self.runner, self.postprocessor, self.image_size, self.slice, self.geometry,
                                     self.log)
            results = []
            for im in images:
                results += self._named(detect([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)],
                                              [im.shape[:2]]))
            return results
        results: List[Dict[str, Any]] = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            x = torch.stack([preprocess(im, self.image_size) for im in chunk])
            results += self.detect(x, [im.shape[:2] for im in chunk])
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
                paths = resolve_source(item)
                for p, image_id in zip(paths, unique_ids(paths)):
                    try:
                        arrays.append(read_rgb(p))
                    except PredictError as e:  # one unusable file does not stop the others
                        self.skipped.append(str(e))
                        continue
                    meta.append({"path": str(p), "image_id": image_id})
        results = self.predict_arrays(arrays, batch)
        for r, m in zip(results, meta):
            r.update(m)
        return results


def draw_detections(rgb: np.ndarray, result: Dict[str, Any], path: Path) -> None:
    """Write the image with its boxes, class names and scores (JPEG/PNG by suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        annotate(rgb, result).save(tmp)


def annotate(rgb: np.ndarray, result: Dict[str, Any]) -> Image.Image:
    """The image with its boxes, class names and scores drawn on it."""
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
    return img
