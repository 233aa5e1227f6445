"""ONNX Runtime inference for models written by ``dsod export`` (the ``onnxruntime`` predict backend).

    from dsod.onnx_backend import OnnxDetector
    det = OnnxDetector("best.onnx")                       # fp32 or the int8 "best-int8.onnx"
    boxes, scores = det.predict(batch)                    # batch: (N, 3, S, S) float32, BGR minus mean
    results = det.detect([rgb_uint8_array, ...])          # full pipeline, like dsod.predict.Detector

The exported graph (``dsod.export``) takes ``images`` (N, 3, S, S) float32 BGR minus (104, 117, 123),
dynamic N, and outputs ``boxes`` (N, A, 4) xyxy normalised to [0, 1] of the input (default boxes baked
in) and ``scores`` (N, A, C) softmax probabilities without the background class; with ``nms=True`` a
third output ``selected`` (K, 3) int64 rows [image, class, box] from ONNX NonMaxSuppression.
Model metadata (``names``, ``image_size``, ``nms``, ...) is stored in the ONNX file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np


class OnnxDetector:
    """An ONNX Runtime session around an exported DSOD.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        conf, iou, max_det: post-processing for ``detect`` (as ``dsod predict``).
    """

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None, conf: float = 0.25,
                 iou: float = 0.45, max_det: int = 200, topk_candidates: int = 400):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found (write one with `dsod export`)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: Dict[str, Any] = {k: _maybe_json(v) for k, v in meta.items()}
        shape = self.session.get_inputs()[0].shape
        self.image_size = int(self.metadata.get("image_size") or shape[-1])
        self.names: List[str] = list(self.metadata.get("names") or [])
        self.has_nms = "selected" in self.output_names
        self.conf, self.iou, self.max_det, self.topk_candidates = conf, iou, max_det, topk_candidates

    def run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """All outputs by name for a preprocessed batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: batch})))

    def predict(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) float32 BGR minus mean -> boxes (N, A, 4) xyxy in [0, 1], scores (N, A, C)."""
        out = self.run(batch)
        return out["boxes"], out["scores"]

    def detect(self, images: Sequence[np.ndarray], batch: int = 8) -> List[Dict[str, Any]]:
        """RGB uint8 images (H, W, 3) -> one dict per image like ``dsod.predict.Detector``: ``boxes``
        (K, 4) xyxy in original pixels, ``scores``, ``labels`` (dataset class index), ``names``.
        Post-processing is ``dsod.postprocess.PostProcessor``'s (per-class top-k, batched NMS)."""
        import torch

        from .postprocess import PostProcessor

        post = PostProcessor(score_thresh=self.conf, nms_thresh=self.iou, topk_candidates=self.topk_candidates,
                             detections_per_img=self.max_det)
        results: List[Dict[str, Any]] = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            x = np.stack([preprocess_rgb(im, self.image_size) for im in chunk])
            boxes, scores = self.predict(x)
            for b, s, im in zip(boxes, scores, chunk):
                h, w = im.shape[:2]
                d = post._single(torch.from_numpy(b), torch.from_numpy(s), float(h), float(w))
                d["names"] = [self.names[int(l)] if int(l) < len(self.names) else str(int(l))
                              for l in d["labels"]]
                results.append(d)
        return results


def preprocess_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (3, size, size) float32 network input: warp-resize (bilinear), BGR, minus
    the mean (104, 117, 123), no std (spec §1.7; the same transform as ``dsod predict``)."""
    from PIL import Image

    from .config import PIXEL_MEAN_BGR

    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.float32)
    bgr = resized[:, :, ::-1] - np.asarray(PIXEL_MEAN_BGR, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def list_images(source: Union[str, Path], limit: Optional[int] = None) -> List[Path]:
    """Image files of a file, a folder, a glob, or a VOC root (its JPEGImages), sorted."""
    from .data.images import find_images

    files = find_images(source)
    return files[:limit] if limit else files


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """Upright RGB uint8, decoded as in training (``dsod.data.images.load_image``); a one-line
    ``ImageError`` for an unusable file."""
    from .data.images import ImageError, load_image

    try:
        return load_image(path)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None


def _maybe_json(v: str):
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v
