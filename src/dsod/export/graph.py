"""The exported graph: DSOD + box decoding + softmax (+ ONNX NonMaxSuppression), written to ONNX.

Inputs and outputs are described in ``dsod.inference.sessions``; the decoding is ``postprocess.decode_outputs``,
the same function eager inference runs, traced into the graph with the default boxes as a constant.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import DsodError
from ..files import atomic_path
from ..inference.postprocess.detection_output import decode_outputs


class ExportError(DsodError):
    """A user-facing export failure (one line)."""


class _OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (boxes (N, A, 4), scores (N, C, A)) -> (K, 3) [image, class, box].
    Eager forward: the same selection with torchvision's NMS (used while tracing and for checks)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou: float, score_thresh: float):
        from torchvision.ops import nms

        rows = []
        for n in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[n, c]
                idx = torch.nonzero(s > score_thresh).flatten()
                keep = nms(boxes[n, idx], s[idx], iou)[:max_per_class]
                k = idx[keep]
                rows.append(torch.stack([torch.full_like(k, n), torch.full_like(k, c), k], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, score_thresh):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_thresh], dtype=torch.float32)))


class DecodedGraph(nn.Module):
    """DSOD + decoding: images -> (boxes xyxy normalised (N, A, 4), scores (N, A, C-1)) [, selected].
    The default boxes are a constant of the graph."""

    def __init__(self, model: nn.Module, variances: Tuple[float, float] = (0.1, 0.2), nms: bool = False,
                 conf: float = 0.01, iou: float = 0.45, max_det: int = 200):
        super().__init__()
        self.model = model
        self.register_buffer("anchors", model.anchors_cxcywh.detach().clone(), persistent=False)
        self.variances = tuple(variances)
        self.nms, self.conf, self.iou, self.max_det = nms, float(conf), float(iou), int(max_det)

    def forward(self, images: torch.Tensor):
        loc, logits = self.model(images)
        boxes, scores = decode_outputs(loc, logits, self.anchors, self.variances)
        if not self.nms:
            return boxes, scores
        selected = _OnnxNMS.apply(boxes, scores.transpose(1, 2).contiguous(), self.max_det, self.iou, self.conf)
        return boxes, scores, selected


def export_onnx(model: nn.Module, path: Path, imgsz: int, *, nms: bool = False, opset: int = 17,
                conf: float = 0.01, iou: float = 0.45, max_det: int = 200,
                metadata: Optional[Dict[str, Any]] = None) -> DecodedGraph:
    """Write ``path``; returns the wrapped eager module that was exported (for verification)."""
    import onnx

    cfg = getattr(model, "config", None)
    variances = cfg.anchors.variances if cfg is not None else (0.1, 0.2)
    wrapper = DecodedGraph(model, variances, nms=nms, conf=conf, iou=iou, max_det=max_det).eval()
    outputs = ["boxes", "scores"] + (["selected"] if nms else [])
    dynamic = {"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}}
    if nms:
        dynamic["selected"] = {0: "num_selected"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer/deprecation chatter; the result is verified below
            torch.onnx.export(wrapper, (torch.zeros(1, 3, imgsz, imgsz),), str(tmp), dynamo=False,
                              input_names=["images"], output_names=outputs, dynamic_axes=dynamic,
                              opset_version=opset, do_constant_folding=True)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        meta = dict(metadata or {})
        meta.update({"image_size": imgsz, "nms": nms, "conf": conf, "iou": iou, "max_det": max_det,
                     "num_anchors": int(model.anchors_cxcywh.shape[0]), "input": "BGR minus (104,117,123), NCHW"})
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(k), json.dumps(v)
        onnx.save(proto, str(tmp))
    return wrapper
