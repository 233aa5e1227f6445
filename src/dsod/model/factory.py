"""The one place where a ``ModelConfig`` becomes modules."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from ..config import ModelConfig, get_config
from ..geometry.anchors import anchors_per_location, default_boxes, resolve_aspect_ratios
from .backbone import DSODBackbone
from .detector import DSOD
from .head import DetectionHead
from .neck import DensePrediction, PlainPrediction
from .norms import L2Norm
from .vgg import VGGBackbone


def _build_features(cfg: ModelConfig) -> Tuple[nn.Module, nn.Module]:
    if cfg.prediction not in ("dense", "plain"):
        raise ValueError(f"unknown prediction structure '{cfg.prediction}'; valid: dense, plain")
    if cfg.backbone not in ("dsod", "vgg"):
        raise ValueError(f"unknown backbone '{cfg.backbone}'; valid: dsod, vgg")
    common = dict(depthwise=cfg.depthwise, norm=cfg.norm, decay=cfg.bn_decay)
    if cfg.backbone == "vgg":
        backbone = VGGBackbone(cfg.vgg_width, cfg.norm, cfg.bn_decay)
    else:
        backbone = DSODBackbone(
            stem=cfg.stem, stem_channels=cfg.stem_channels, growth_rate=cfg.growth_rate,
            bottleneck_width=cfg.bottleneck_width, block_config=cfg.block_config,
            transition_pooling=cfg.transition_pooling, compression=cfg.compression,
            final_channels=cfg.prediction_widths[0] if cfg.prediction == "dense" else None,
            memory_efficient=cfg.memory_efficient, **common)
    neck_cls = DensePrediction if cfg.prediction == "dense" else PlainPrediction
    neck = neck_cls(backbone.first_channels, backbone.out_channels, cfg.prediction_widths, **common)
    return backbone, neck


def build_backbone(cfg: ModelConfig | str, **overrides) -> nn.Module:
    """The randomly initialised backbone alone (Caffe's xavier filler, as in ``init_weights``): its
    forward returns (First, pool(First), last output). Used to put the very same backbone into other
    detectors (torchvision's Faster R-CNN in ``dsod.experiments``)."""
    if isinstance(cfg, str):
        cfg = get_config(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    backbone, _ = _build_features(cfg)
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
    return backbone


def feature_sizes(cfg: ModelConfig) -> List[Tuple[int, int]]:
    """Spatial sizes of the prediction sources, read off a forward pass on the meta device (no
    memory, no compute), so the default boxes always agree with the network."""
    with torch.device("meta"):
        backbone, neck = _build_features(cfg)
        backbone.eval(), neck.eval()
        sources = neck(backbone(torch.empty(1, 3, cfg.image_size, cfg.image_size)))
    return [tuple(s.shape[-2:]) for s in sources]


def init_weights(model: DSOD) -> None:
    """Caffe-equivalent initialisation (ORIGINAL.md §1.1, §6.4): backbone and prediction-structure convs use
    Caffe's ``xavier`` filler, uniform +-sqrt(3 / fan_in) (= kaiming_uniform_ with gain 1, not
    PyTorch's xavier_uniform_); head convs N(0, 0.01); norm gamma 1, beta 0; L2Norm scales 20."""
    for part in (model.backbone, model.neck):
        for m in part.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
    for m in model.head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, L2Norm):
            nn.init.constant_(m.weight, model.config.l2norm_init)


def build_model(cfg: ModelConfig | str, **overrides) -> DSOD:
    """Build a randomly initialised DSOD from a config or a preset name (``"dsod300"``)."""
    if isinstance(cfg, str):
        cfg = get_config(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    if cfg.num_classes < 2:
        raise ValueError(f"num_classes={cfg.num_classes}: it counts background, so it must be >= 2")
    sizes = feature_sizes(cfg)
    ratios = resolve_aspect_ratios(cfg.anchors, len(sizes))
    backbone, neck = _build_features(cfg)
    head = DetectionHead(neck.out_channels, anchors_per_location(ratios), cfg.num_classes,
                         depthwise=cfg.depthwise, norm=cfg.norm, eps=cfg.head_bn_eps, decay=cfg.bn_decay,
                         l2norm_init=cfg.l2norm_init, memory_efficient=cfg.memory_efficient)
    anchors = default_boxes(cfg.anchors, cfg.image_size, sizes)
    model = DSOD(backbone, neck, head, anchors, config=cfg)
    init_weights(model)
    return model
