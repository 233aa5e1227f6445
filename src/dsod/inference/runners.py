"""What runs a trained network on a preprocessed batch, one small class per backend.

A runner maps the network input (N, 3, S, S) float32 (``dsod.data.preprocess``) to the decoded outputs
(boxes (N, A, 4) xyxy normalised to the input, scores (N, A, C-1) without background) that
``PostProcessor.select`` turns into detections. ``dsod predict``, ``dsod val`` and the int8 accuracy
check of ``dsod export`` all go through a runner, so each measures or serves the same thing.

    TorchRunner(model)                  eager PyTorch, on any device
    TorchRunner(model, fused=True)      ``dsod.model.fast.fuse_for_inference`` (BN folded, CPU fast path)
    OrtRunner("best.onnx")              ONNX Runtime (fp32 or int8 files written by ``dsod export``)
    OrtRunner("best.onnx", engine="openvino")  the same file in OpenVINO
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .postprocess.detection_output import PostProcessor, decode_outputs

Decoded = Tuple[torch.Tensor, torch.Tensor]


class TorchRunner:
    """A DSOD model in PyTorch (``fused``: the inference-only fused copy, CPU)."""

    def __init__(self, model: torch.nn.Module, device: Union[str, torch.device] = "cpu", fused: bool = False,
                 autocast: Optional[Callable[[], Any]] = None):
        self.device = torch.device(device)
        self.autocast = autocast or contextlib.nullcontext  # training's validation: its bf16/fp16 autocast
        self.name = "fused" if fused else "torch"
        model = model.eval()
        self.variances = tuple(model.config.anchors.variances)
        self.anchors = model.anchors_cxcywh.detach().to(self.device)
        if fused:
            from ..model.fast import fuse_for_inference

            model = fuse_for_inference(model)
        self.net = model.to(self.device)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> Decoded:
        with self.autocast():
            out = self.net(x.to(self.device, non_blocking=True))
        boxes, scores = decode_outputs(out.bbox_regression, out.cls_logits, self.anchors, self.variances)
        return boxes.cpu(), scores.cpu()


class OrtRunner:
    """An exported model in ONNX Runtime (``engine="onnxruntime"``) or OpenVINO (``"openvino"``);
    ``metadata`` is the file's (names, image_size, int8 figures)."""

    def __init__(self, path: Union[str, Path], threads: Optional[int] = None, engine: str = "onnxruntime"):
        from .sessions import OpenVinoSession, OrtSession

        if engine not in ("onnxruntime", "openvino"):
            raise ValueError(f"engine={engine}: valid: onnxruntime, openvino")
        self.session = (OpenVinoSession if engine == "openvino" else OrtSession)(path, threads=threads)
        self.metadata: Dict[str, Any] = self.session.metadata
        self.name = engine + ("-int8" if "quantization" in self.metadata else "")

    def __call__(self, x: torch.Tensor) -> Decoded:
        boxes, scores = self.session.predict(np.ascontiguousarray(x.numpy(), dtype=np.float32))
        return torch.from_numpy(boxes), torch.from_numpy(scores)


def detector(runner, postprocessor: PostProcessor):
    """``runner`` + ``postprocessor`` as the detector ``dsod.metrics.loop.evaluate`` takes:
    (preprocessed batch, original sizes) -> detections in original pixels."""
    def detect(images: torch.Tensor, sizes) -> List[Dict[str, torch.Tensor]]:
        return postprocessor.select(*runner(images), sizes)
    return detect
