"""The one factory of the DSOD family: a config becomes the network, its loss and its post-processor
(DETR's ``build(args) -> model, criterion, postprocessors``), so that the three always share the
config's box-coding variances and no caller assembles them by hand.

    model, criterion, postprocessor = build("dsod300", num_classes=21)

The network alone is ``dsod.model.build_model``. The other families keep their own builders with the
same shape of result where they have the parts: torchvision's SSD peers (``dsod.model.peers``,
losses and post-processing inside the torchvision model) and the Faster R-CNN arm of the ablation
(``dsod.experiments.frcnn.build_faster_rcnn``, evaluated by ``frcnn_detector``)."""
from __future__ import annotations

from typing import NamedTuple, Union

from .config import ModelConfig
from .inference.postprocess.detection_output import PostProcessor
from .model import DSOD, build_model
from .model.loss import MultiBoxLoss


class Built(NamedTuple):
    model: DSOD
    criterion: MultiBoxLoss
    postprocessor: PostProcessor


def build(cfg: Union[str, ModelConfig], *, score_thresh: float = 0.01, nms_thresh: float = 0.45,
          detections_per_img: int = 200, **overrides) -> Built:
    """(model, MultiBoxLoss, PostProcessor) for a preset name or ``ModelConfig`` (``overrides``: config
    fields, as ``build_model``); post-processing defaults are Caffe's ``DetectionOutput`` (ORIGINAL.md §1.7)."""
    model = build_model(cfg, **overrides)
    variances = tuple(model.config.anchors.variances)
    return Built(model, MultiBoxLoss(variances=variances),
                 PostProcessor(score_thresh=score_thresh, nms_thresh=nms_thresh,
                               detections_per_img=detections_per_img, variances=variances))


def criterion_for(cfg: ModelConfig) -> MultiBoxLoss:
    """The loss of an already built network's config (a checkpoint's, a resized preset's)."""
    return MultiBoxLoss(variances=tuple(cfg.anchors.variances))
