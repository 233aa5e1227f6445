"""From a checkpoint to verified ONNX files (fp32, and int8 with its accuracy measured): the steps
``dsod export`` prints and ``backend=auto`` runs once per checkpoint (``dsod.inference.backends``).

Each file records where it came from: ``checkpoint_sha256`` (so a cached export is rebuilt when the
checkpoint changes) and, for int8, ``weight_bits`` and the VOC07 mAP@0.5 of the fp32 and int8 files
on the dataset's validation images (``map_fp32``, ``map_int8``, ``map_change``, in points), which
``backend=auto`` reads to decide whether int8 loses accuracy.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from ..files import atomic_path
from .graph import DecodedGraph, ExportError, export_onnx
from .inputs import spread, verify
from .quantize import quantize_int8

# The most int8 may lose (VOC07 mAP@0.5 points on the val split) for backend=auto to serve it.
INT8_MAX_LOSS_POINTS = 0.5
# Cap on the val images the int8 check evaluates (spread over the split), so that it stays a minute or
# two for large val sets; the figure says how many were used.
INT8_CHECK_MAX_IMAGES = 500


def checkpoint_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fused_graph(model: nn.Module) -> nn.Module:
    """The graph that is exported: BN folded into the convolutions (the same function, fewer ops)."""
    from ..model.fast import fuse_for_inference

    return fuse_for_inference(model, channels_last=False, mkldnn_fusion=False)


def write_fp32(model: nn.Module, out: Path, imgsz: int, batch: np.ndarray, *, graph: str = "fused",
               nms: bool = False, opset: int = 17, conf: float = 0.01, iou: float = 0.45, max_det: int = 200,
               metadata: Optional[Dict[str, Any]] = None, atol: float = 1e-3,
               threads: Optional[int] = None) -> Tuple[DecodedGraph, Dict[str, float], float]:
    """Export ``model`` to ``out`` and verify it against eager on ``batch``; returns (the eager
    reference module, the differences, seconds). Raises ``ExportError`` beyond ``atol``."""
    if graph not in ("fused", "plain"):
        raise ExportError(f"graph={graph}: valid: fused, plain")
    t0 = time.perf_counter()
    net = fused_graph(model) if graph == "fused" else model
    export_onnx(net, out, imgsz, nms=nms, opset=opset, conf=conf, iou=iou, max_det=max_det,
                metadata={**(metadata or {}), "graph": graph})
    seconds = time.perf_counter() - t0
    ref = DecodedGraph(model, model.config.anchors.variances, nms=nms, conf=conf, iou=iou, max_det=max_det).eval()
    diffs = verify(ref, out, batch, threads)
    if diffs["boxes"] > atol or diffs["scores"] > atol:
        raise ExportError(f"{out}: ONNX output differs from eager by more than atol={atol} "
                          f"(boxes {diffs['boxes']:.2e}, scores {diffs['scores']:.2e})")
    return ref, diffs, seconds


def voc07_map(runner, spec, records: Sequence, batch: int = 8) -> float:
    """VOC07 11-point mAP@0.5 of a runner on ``records`` (score 0.01, NMS 0.45, as ``dsod val``)."""
    from ..data import eval_loader
    from ..inference.postprocess.detection_output import PostProcessor
    from ..inference.runners import detector
    from ..metrics import Evaluator
    from ..metrics.loop import evaluate

    loader = eval_loader(records, int(runner.metadata["image_size"]), batch)
    res = evaluate(detector(runner, PostProcessor()), loader, Evaluator(spec.info, list(records), coco=False),
                   progress=False)
    return float(res["voc07_map50"])


def int8_accuracy(fp32_path: Path, int8_path: Path, spec, split: str = "val",
                  max_images: int = INT8_CHECK_MAX_IMAGES, threads: Optional[int] = None) -> Dict[str, Any]:
    """mAP of the fp32 and int8 files on (up to ``max_images`` of) a dataset split, and the change."""
    from ..inference.runners import OrtRunner

    records = spread(spec.records(split), max_images)
    fp32 = voc07_map(OrtRunner(fp32_path, threads), spec, records)
    int8 = voc07_map(OrtRunner(int8_path, threads), spec, records)
    return {"map_fp32": round(100 * fp32, 2), "map_int8": round(100 * int8, 2),
            "map_change": round(100 * (int8 - fp32), 2),
            "map_data": f"VOC07 mAP@0.5 on {len(records)} {split} images of {spec.root}"}


def write_int8(fp32_path: Path, out: Path, calib: np.ndarray, *, spec=None, split: str = "val",
               method: str = "minmax", reduce_range: Optional[bool] = None, keep_fp32: Sequence[str] = (),
               threads: Optional[int] = None) -> Dict[str, Any]:
    """Quantise ``fp32_path`` to ``out`` (calibrated on ``calib``) and, given a dataset ``spec``,
    measure and record the accuracy change; returns what was recorded."""
    t0 = time.perf_counter()
    quantize_int8(fp32_path, out, calib, method=method, reduce_range=reduce_range, keep_fp32=keep_fp32)
    figures: Dict[str, Any] = {"quantize_s": round(time.perf_counter() - t0, 1)}
    if spec is not None and split in spec.splits:
        figures.update(int8_accuracy(fp32_path, out, spec, split, threads=threads))
        add_metadata(out, {k: v for k, v in figures.items() if k != "quantize_s"})
    return figures


def add_metadata(path: Path, entries: Dict[str, Any]) -> None:
    import json

    import onnx

    proto = onnx.load(str(path))
    for k, v in entries.items():
        e = proto.metadata_props.add()
        e.key, e.value = str(k), json.dumps(v)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
