"""Run a detector over an evaluation loader and feed the one evaluator (``dsod.metrics``).

The same function serves periodic validation during training and ``dsod val``."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from tqdm import tqdm

from ..postprocess import PostProcessor


def autocast_context(device: torch.device, amp: bool, bf16: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def run_evaluation(model: torch.nn.Module, loader, evaluator, device: torch.device,
                   postprocessor: Optional[PostProcessor] = None, amp: bool = False, bf16: bool = False,
                   progress: bool = True, desc: str = "val"):
    """Returns ``evaluator.compute()``. Predictions are mapped back to original image pixels."""
    postprocessor = postprocessor or PostProcessor()
    was_training = model.training
    model.eval()
    anchors = model.anchors_cxcywh
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with autocast_context(device, amp, bf16):
            out = model(images.to(device, non_blocking=True))
        sizes = [tuple(int(v) for v in t["orig_size"]) for t in targets]
        dets = postprocessor(out.bbox_regression.float(), out.cls_logits.float(), anchors, image_sizes=sizes)
        evaluator.update([t["image_id"] for t in targets], [{k: v.cpu() for k, v in d.items()} for d in dets])
    model.train(was_training)
    return evaluator.compute()
