"""The torchvision detectors ``dsod bench`` compares against, built with ``weights=None,
weights_backbone=None`` (nothing is downloaded; random weights time the same)."""
from __future__ import annotations

import torch

PEERS = ("ssd300_vgg16", "ssdlite320")


class Peer:
    """A torchvision SSD: the whole model (training), its network part and its post-processing."""

    def __init__(self, name: str):
        from torchvision.models import detection

        if name == "ssd300_vgg16":
            self.model, self.size = detection.ssd300_vgg16(weights=None, weights_backbone=None), 300
        elif name in ("ssdlite320", "ssdlite320_mobilenet_v3_large"):
            self.model = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
            self.size = 320
        else:
            raise ValueError(f"unknown peer '{name}'; valid: {', '.join(PEERS)}")
        self.name = name
        self.model.eval()
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def net(self, x: torch.Tensor):
        feats = list(self.model.backbone(x).values())
        return self.model.head(feats), feats

    def postprocess(self, x: torch.Tensor, head, feats):
        from torchvision.models.detection.image_list import ImageList

        images = ImageList(x, [(self.size, self.size)] * x.shape[0])
        anchors = self.model.anchor_generator(images, feats)
        return self.model.postprocess_detections(head, anchors, images.image_sizes)
