"""One training step of the detector: forward, MultiBoxLoss normalised over the global batch, backward
over ``accumulate`` micro-batches, and the optimizer step, with a non-finite loss skipped on every
process alike. Used by the trainer and by its speed probe (engine/budget.py)."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from ..runtime import distributed as dist_utils

LossFn = Callable[[torch.Tensor, list], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


def to_device(images: torch.Tensor, targets: list, device: torch.device,
              memory_format: torch.memory_format = torch.contiguous_format):
    # pinned host memory on CUDA (the loader's pin_memory): the copies overlap the compute
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def detection_loss(net, model, criterion, images: torch.Tensor, targets: list, device: torch.device,
                   memory_format: torch.memory_format, autocast: Optional[contextlib.AbstractContextManager],
                   world: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss of one micro-batch (loss, matching and mining in fp32 whatever the autocast).

    Under DDP the loss is normalised by the positives of the whole global batch, so N processes x
    batch b train exactly like 1 process x batch N*b (Caffe normalised per GPU; results then depend on
    the GPU count): the loss returns its positives, and one all-reduce of them is all it takes."""
    images, targets = to_device(images, targets, device, memory_format)
    with autocast or contextlib.nullcontext():
        out = net(images)
    parts = criterion(out.bbox_regression.float(), out.cls_logits.float(), targets, model.anchors_cxcywh)
    loss = parts["loss"]
    if world > 1:
        local = parts["num_pos"].float().reshape(1)
        total = dist_utils.all_reduce_sum(local)
        loss = loss * local.clamp(min=1) / total.clamp(min=1) * world
    return loss.reshape(()), parts


def train_step(batches: Iterator, loss_fn: LossFn, optimizer: torch.optim.Optimizer, scaler, *,
               accumulate: int, world: int, device: torch.device, params=None,
               grad_clip: float = 0.0) -> Optional[Dict[str, float]]:
    """One optimizer step over ``accumulate`` micro-batches; the mean loss parts, or None when a loss
    was not finite on any process (the gradients are then dropped, nothing is updated).

    Every micro-batch runs forward and backward on every process even after a non-finite loss: DDP's
    gradient all-reduce and the loss's positives all-reduce must be entered by all processes alike."""
    optimizer.zero_grad(set_to_none=True)
    sums = {"loss": 0.0, "loss_loc": 0.0, "loss_conf": 0.0}
    finite = True
    for _ in range(accumulate):
        images, targets = next(batches)
        loss, parts = loss_fn(images, targets)
        loss = loss / accumulate
        finite = finite and bool(torch.isfinite(loss))
        scaler.scale(loss).backward()
        for k in sums:
            sums[k] += float(parts[k].detach()) / accumulate
    if world > 1:  # every process must agree on skipping, or their weights would drift apart
        flag = dist_utils.all_reduce_sum(torch.tensor([0.0 if finite else 1.0], device=device))
        finite = bool(flag.item() == 0)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        return None
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return sums


class NonFiniteGuard:
    """What a skipped step (``train_step`` returned None) means for the run: counted and reported,
    and after ``max_bad`` in a row the run stops with a one-line ``TrainingError``."""

    def __init__(self, max_bad: int):
        self.max_bad, self.in_row, self.total = max_bad, 0, 0

    def __call__(self, finite: bool, iteration: int, lr: float, warn) -> None:
        if finite:
            self.in_row = 0
            return
        from .run import TrainingError

        self.in_row, self.total = self.in_row + 1, self.total + 1
        warn(f"warning: non-finite loss at iteration {iteration}; step skipped "
             f"({self.in_row} in a row, {self.total} in total)")
        if self.in_row >= self.max_bad:
            raise TrainingError(f"the loss was NaN/inf for {self.in_row} iterations in a row at iteration "
                                f"{iteration}; lower lr (now {lr:g}), enable grad_clip, or check the data")
