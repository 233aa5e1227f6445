"""Greedy per-class NMS (Caffe ``DetectionOutput``'s ``ApplyNMSFast``: a candidate is dropped when its
IoU with a kept box of its class, visited earlier, exceeds the threshold).

``class_nms(boxes (n, 4), classes, ranks, counts, iou, max_per_class)`` -> positions of the kept
candidates; ``dsod.inference.postprocess.selection`` hands it each class's candidates in Caffe's order.

On CPU it runs ONNX Runtime's ``NonMaxSuppression`` kernel, one call for all classes (each class is a
"batch" of the op), when onnxruntime and onnx are installed; else torchvision's ``nms``, one call per
class. Both are exact greedy NMS and keep the same boxes (tests/test_postprocess.py); ONNX Runtime's
compares each candidate with the boxes kept so far and stops at the first that suppresses it, where
torchvision's compares each kept box with every later candidate: on a trained BCCD model's 3 x 400
candidates at score 0.01 that was ~1.8x less time on one core (docs/PERFORMANCE.md, "Post-processing"),
and the per-class Python loop goes. ``DSOD_NMS=torchvision`` forces torchvision's.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np
import torch
from torchvision.ops import nms

_SESSION = None  # the one-node ONNX Runtime session, built on first use; False: not installed


def _session():
    global _SESSION
    if _SESSION is None:
        try:
            import onnxruntime as ort
            from onnx import TensorProto, helper
        except ImportError:
            _SESSION = False
            return None
        io = helper.make_tensor_value_info
        graph = helper.make_graph(
            [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "thresh"], ["selected"])],
            "class_nms",
            [io("boxes", TensorProto.FLOAT, ["C", "k", 4]), io("scores", TensorProto.FLOAT, ["C", 1, "k"]),
             io("max", TensorProto.INT64, [1]), io("iou", TensorProto.FLOAT, [1]),
             io("thresh", TensorProto.FLOAT, [1])],
            [io("selected", TensorProto.INT64, ["n", 3])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
        model.ir_version = 7  # readable by every onnxruntime the extra allows
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # the kernel is serial anyway
        _SESSION = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _SESSION or None


@functools.lru_cache(maxsize=None)
def numba_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def kernel(requested: Optional[str] = None) -> str:
    """The selection's NMS kernel: ``requested`` ("numba" | "onnxruntime" | "torchvision"), else
    ``DSOD_NMS``, else the first installed of numba (the whole selection compiled,
    ``dsod.inference.postprocess.kernel``), ONNX Runtime, torchvision. A requested kernel that is not installed
    falls back in the same order."""
    want = (requested or os.environ.get("DSOD_NMS") or "auto").lower()
    if want not in ("auto", "numba", "onnxruntime", "torchvision"):
        raise ValueError(f"NMS kernel {want!r} is not one of auto, numba, onnxruntime, torchvision (DSOD_NMS)")
    if want in ("auto", "numba") and numba_available():
        return "numba"
    if want == "torchvision" or _session() is None:
        return "torchvision"
    return "onnxruntime"


def class_nms(boxes: np.ndarray, classes: np.ndarray, ranks: np.ndarray, counts: np.ndarray, iou: float,
              max_per_class: int, use: Optional[str] = None) -> np.ndarray:
    """Greedy NMS within each class. ``boxes`` (n, 4) xyxy, grouped by class (``classes``, ascending) and
    within a class in the order NMS visits them (``ranks``: 0, 1, ... per class); ``counts`` (C,)
    candidates per class. Returns the positions (into ``boxes``) of the kept candidates, at most
    ``max_per_class`` per class (the first kept), in no particular order. ``use``: the kernel
    (``kernel``). The order is handed to the kernels as distinct scores (count - rank), so equal
    scores keep the caller's order."""
    n = int(classes.size)
    if n == 0 or max_per_class <= 0:
        return np.zeros(0, np.int64)
    starts = np.cumsum(counts) - counts
    if kernel(requested=use) != "torchvision" and _session() is not None:
        width = int(counts.max())
        c = int(counts.size)
        padded = np.zeros((c, width, 4), np.float32)
        order = np.zeros((c, 1, width), np.float32)  # 0: padding, not above the threshold 0
        padded[classes, ranks] = boxes
        order[classes, 0, ranks] = (width - ranks).astype(np.float32)
        feed = {"boxes": padded, "scores": order, "max": np.array([max_per_class], np.int64),
                "iou": np.array([iou], np.float32), "thresh": np.array([0.0], np.float32)}
        sel = _session().run(None, feed)[0]
        return starts[sel[:, 0]] + sel[:, 2]
    t = torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32))
    kept = []
    for c in np.flatnonzero(counts):
        lo, k = int(starts[c]), int(counts[c])
        order = torch.arange(k, 0, -1, dtype=torch.float32)
        kept.append(nms(t[lo:lo + k], order, iou)[:max_per_class].numpy() + lo)
    return np.concatenate(kept)
