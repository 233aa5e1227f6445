"""The DSOD detector: backbone -> prediction structure -> heads. Same output in train and eval;
the loss (``dsod.model.loss``) and post-processing (``dsod.inference.postprocess.detection_output``) are separate callables."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class HeadOutputs(NamedTuple):
    bbox_regression: torch.Tensor  # (N, num_anchors, 4) encoded offsets (see dsod.geometry.box_coder)
    cls_logits: torch.Tensor  # (N, num_anchors, num_classes) raw scores, class 0 = background


class DSOD(nn.Module):
    """Args:
        backbone, neck, head: the three parts (see ``dsod.model.factory.build_model``).
        anchors_cxcywh: (num_anchors, 4) default boxes in the order of the head outputs; kept as a
            non-persistent buffer so that it follows ``.to(device)`` but is never stale in a checkpoint.
        config: the ``ModelConfig`` it was built from (for checkpoints and summaries).
    Input: (N, 3, S, S) float, BGR minus the mean (see ``dsod.config``).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, anchors_cxcywh: torch.Tensor,
                 config=None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.register_buffer("anchors_cxcywh", anchors_cxcywh, persistent=False)
        self.config = config

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.backbone(images))

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        return HeadOutputs(*self.head(self.forward_features(images)))
