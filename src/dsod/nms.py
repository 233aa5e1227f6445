"""Greedy per-class NMS over each class's own candidate list (Caffe ``DetectionOutput``'s ``ApplyNMSFast``:
a candidate is dropped when its IoU with a kept, higher-scoring box of its class exceeds the threshold).

``class_nms(boxes (C, k, 4), scores (C, k), iou, score_thresh)`` -> (class, rank) of the kept candidates.

On CPU tensors it runs ONNX Runtime's ``NonMaxSuppression`` kernel, one call for all classes (each
class is a "batch" of the op), when onnxruntime and onnx are installed; else torchvision's ``nms``,
one call per class. Both are exact greedy NMS and keep the same boxes (checked on every BCCD and
chess_rf100 val image, tests/test_postprocess.py); ONNX Runtime's compares each candidate with the boxes
kept so far and stops at the first that suppresses it, where torchvision's compares each kept box with
every later candidate: on a trained BCCD model's 3 x 400 candidates at score 0.01 that is ~1.8x less
time on one core (docs/PERFORMANCE.md, "Post-processing"), and the per-class Python loop goes.
CUDA tensors use torchvision's GPU kernel. ``DSOD_NMS=torchvision`` forces torchvision's.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

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


def kernel(device: torch.device = torch.device("cpu"), requested: Optional[str] = None) -> str:
    """The NMS kernel used for tensors on ``device``: ``requested`` ("onnxruntime" | "torchvision"),
    else ``DSOD_NMS``, else ONNX Runtime's on CPU where installed."""
    want = (requested or os.environ.get("DSOD_NMS") or "auto").lower()
    if want not in ("auto", "onnxruntime", "torchvision"):
        raise ValueError(f"NMS kernel {want!r} is not one of auto, onnxruntime, torchvision (DSOD_NMS)")
    if want == "torchvision" or device.type != "cpu" or _session() is None:
        return "torchvision"
    return "onnxruntime"


def class_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, score_thresh: float,
              use: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``boxes`` (C, k, 4) xyxy and ``scores`` (C, k), each class's candidates sorted by score (as
    ``topk`` returns them); those at or below ``score_thresh`` are not candidates. Returns (classes,
    ranks) int64 of the kept candidates; ``use``: the kernel (``kernel``)."""
    if boxes.shape[1] > 0 and kernel(boxes.device, use) == "onnxruntime":
        feed = {"boxes": boxes.float().contiguous().numpy(), "scores": scores.float().unsqueeze(1).contiguous().numpy(),
                "max": np.array([boxes.shape[1]], np.int64), "iou": np.array([iou], np.float32),
                "thresh": np.array([score_thresh], np.float32)}
        sel = _session().run(None, feed)[0]
        sel = torch.from_numpy(sel)
        return sel[:, 0], sel[:, 2]
    classes, ranks = [], []
    counts = (scores > score_thresh).sum(1).tolist()  # a prefix of each sorted row
    for c, n in enumerate(counts):
        if n:
            keep = nms(boxes[c, :n], scores[c, :n], iou)
            classes.append(torch.full_like(keep, c))
            ranks.append(keep)
    if not ranks:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
        return empty, empty
    return torch.cat(classes), torch.cat(ranks)

