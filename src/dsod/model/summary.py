"""Model summary: trainable parameters, BN running statistics, multiply-accumulates, sources."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from .detector import DSOD


@dataclass
class ModelSummary:
    name: str
    description: str
    trainable_params: int
    bn_running_stats: int
    macs: int
    source_shapes: List[Tuple[int, int, int]]
    num_anchors: int
    image_size: int

    def format(self) -> str:
        lines = [
            f"model            {self.name} ({self.description})",
            f"input            3x{self.image_size}x{self.image_size}",
            f"trainable params {self.trainable_params:,}",
            f"BN running stats {self.bn_running_stats:,}",
            f"MACs             {self.macs / 1e9:.2f} G ({2 * self.macs / 1e9:.1f} GFLOP)",
            "sources          " + ", ".join(f"{c}x{h}x{w}" for c, h, w in self.source_shapes),
            f"default boxes    {self.num_anchors:,}",
        ]
        return "\n".join(lines)


def count_macs(model: torch.nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted by PyTorch's own FLOP counter
    (convolutions and matmuls; 1 MAC = 2 FLOPs). Norms, ReLU and pooling are not counted, matching
    the spec's convention (ORIGINAL.md §2: 15.08 G MACs for DSOD300)."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size, dtype=param.dtype, device=param.device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def summarize(model: DSOD) -> ModelSummary:
    cfg = model.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
                  if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        param = next(model.parameters())
        sources = model.forward_features(torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=param.device))
        model.train(was_training)
    return ModelSummary(
        name=cfg.name, description=cfg.describe(), trainable_params=trainable, bn_running_stats=running,
        macs=count_macs(model, cfg.image_size), source_shapes=[tuple(s.shape[1:]) for s in sources],
        num_anchors=model.anchors_cxcywh.shape[0], image_size=cfg.image_size)
