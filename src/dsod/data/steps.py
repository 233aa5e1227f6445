"""The per-sample steps of the SSD/DSOD augmentation (ORIGINAL.md §1.8) that both pipelines share:
``transforms.reference_train_transform`` (Caffe's order, full-size pixels) and ``augment.SSDAugment``
(the same draws and box kernels, pixels rendered at the output size). They live here, below both, so
that neither pipeline module imports the other (see ``transforms`` for what each step does and why).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from ..config import PIXEL_MEAN_BGR
from .preprocess import to_network_input

PIXEL_MEAN_RGB = tuple(PIXEL_MEAN_BGR[::-1])
# Caffe's 7 batch samplers (ORIGINAL.md §1.8): the whole image, then min IoU 0.1 ... 0.9, then no constraint
# (Caffe writes it as max_jaccard_overlap 1.0, which any ground-truth box satisfies).
SSD_MIN_IOUS: Tuple[Optional[float], ...] = (0.1, 0.3, 0.5, 0.7, 0.9, None)
# OpenCV's {linear, area, nearest, cubic, Lanczos4} in torchvision terms: (interpolation, antialias)
RESIZE_CHOICES = (
    (InterpolationMode.BILINEAR, False),  # INTER_LINEAR
    (InterpolationMode.BILINEAR, True),  # INTER_AREA: antialiased bilinear averages like area when shrinking
    (InterpolationMode.NEAREST, False),  # INTER_NEAREST
    (InterpolationMode.BICUBIC, False),  # INTER_CUBIC
    (InterpolationMode.LANCZOS, True),  # INTER_LANCZOS4 (torchvision: antialiased Lanczos only)
)


class SSDPhotometricDistort(v2.Transform):
    """SSD Caffe's ``DistortImage`` (ORIGINAL.md §1.8), on uint8 RGB images.

    brightness: + uniform(-32, 32) (p 0.5); then, in one of two orders picked with p 0.5,
    contrast x uniform(0.5, 1.5) (p 0.5) before or after saturation x uniform(0.5, 1.5) (p 0.5) and hue
    + uniform(-18, 18) degrees (p 0.5); no channel permutation (``random_order_prob`` 0).

    Why not ``v2.RandomPhotometricDistort``: its brightness is multiplicative (0.875-1.125, not an
    additive delta of 32 levels), its contrast blends towards the mean grey (Caffe multiplies the
    pixels), and it permutes channels with the same probability p (Caffe's DSOD/SSD configs disable
    that) and cannot switch it off separately. Saturation and hue use the v2 kernels: hue is the same
    HSV rotation (18 degrees = hue factor 0.05); saturation blends with the grey image instead of
    scaling HSV S, which changes chroma the same way for these factors.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness_delta: float = 32.0, contrast: Tuple[float, float] = (0.5, 1.5),
                 saturation: Tuple[float, float] = (0.5, 1.5), hue_delta_degrees: float = 18.0,
                 p: float = 0.5):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast = tuple(contrast)
        self.saturation = tuple(saturation)
        self.hue_delta_degrees = hue_delta_degrees
        self.p = p

    def make_params(self, flat_inputs: list) -> Dict[str, Any]:
        r = torch.rand(9).tolist()  # one RNG call for all draws

        def maybe(i: int, lo: float, hi: float) -> Optional[float]:
            return lo + (hi - lo) * r[i + 1] if r[i] < self.p else None

        d, h = self.brightness_delta, self.hue_delta_degrees / 360.0
        return dict(brightness=maybe(0, -d, d), contrast_first=r[2] < 0.5, contrast=maybe(3, *self.contrast),
                    saturation=maybe(5, *self.saturation), hue=maybe(7, -h, h) if h > 0 else None)

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        x = inpt.as_subclass(torch.Tensor)
        if x.dtype != torch.uint8:
            raise TypeError(f"{type(self).__name__} expects uint8 images, got {x.dtype}")
        if params["brightness"] is not None:  # Caffe: convertTo(alpha 1, beta delta), saturating
            x = (x.to(torch.float32) + params["brightness"]).round_().clamp_(0, 255).to(torch.uint8)
        if params["contrast"] is not None and params["contrast_first"]:
            x = _scale(x, params["contrast"])
        if params["saturation"] is not None:
            x = F.adjust_saturation(x, params["saturation"])
        if params["hue"] is not None:
            x = F.adjust_hue(x, params["hue"])
        if params["contrast"] is not None and not params["contrast_first"]:
            x = _scale(x, params["contrast"])
        return tv_tensors.wrap(x, like=inpt)

    # torchvision < 0.21 calls the private names
    _get_params = make_params
    _transform = transform


def _scale(x: torch.Tensor, alpha: float) -> torch.Tensor:
    # Caffe's AdjustContrast: convertTo(alpha, beta 0) = pixel * alpha, saturating to 0..255
    return (x.to(torch.float32) * alpha).round_().clamp_(0, 255).to(torch.uint8)


class SSDBatchSamplerCrop(v2.RandomIoUCrop):
    """SSD Caffe's batch-sampler crop (ORIGINAL.md §1.8): each of the samplers (``min_ious``; None = no IoU
    constraint) tries up to ``max_trials`` crops and keeps the first that satisfies it; one result is
    then picked uniformly among the successful samplers *and the whole image*. A crop has area
    ``scale^2`` of the image and aspect ``a`` (relative to the image's), ``scale ~ U[0.3, 1]``,
    ``a ~ U[0.5, 2]`` clamped to ``[scale^2, 1/scale^2]`` (so it fits), at a uniform offset.
    It satisfies min IoU ``m`` when some ground-truth box has IoU >= m with it. Boxes whose centre lies
    in the crop (inclusive, Caffe's ``emit_constraint CENTER``) are kept and clipped; the others are
    zeroed for ``SanitizeBoundingBoxes``.

    Differences from v2.RandomIoUCrop's sampling, why this overrides ``make_params``: it samples width
    and height scales independently (pixel aspect limits), requires the IoU only among boxes whose
    centre is in the crop, chooses the constraint first and retries forever, and never returns the
    unconstrained crop. Our one addition to Caffe: a crop must keep at least one box centre (a crop
    that would leave no box is not a success), so a positive image never turns into an empty one.
    Images without boxes are returned whole.
    """

    def __init__(self, min_scale: float = 0.3, max_scale: float = 1.0, min_aspect_ratio: float = 0.5,
                 max_aspect_ratio: float = 2.0, min_ious: Sequence[Optional[float]] = SSD_MIN_IOUS,
                 max_trials: int = 50):
        super().__init__(min_scale, max_scale, min_aspect_ratio, max_aspect_ratio,
                         sampler_options=[m if m is not None else 0.0 for m in min_ious], trials=max_trials)
        self.min_ious = tuple(min_ious)
        self.max_trials = max_trials

    def make_params(self, flat_inputs: list) -> Dict[str, Any]:
        boxes = next(x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes))
        # the boxes' canvas is the image's size (v2 keeps them in step); reading it from the boxes
        # lets augment.SSDAugment draw the crop from the boxes alone, before any pixel is decoded
        h, w = boxes.canvas_size
        xyxy = F.convert_bounding_box_format(boxes.as_subclass(torch.Tensor), old_format=boxes.format,
                                             new_format=tv_tensors.BoundingBoxFormat.XYXY).to(torch.float64)
        if xyxy.numel() == 0:
            return {}
        s, t = len(self.min_ious), self.max_trials
        r = torch.rand(s, t, 4, dtype=torch.float64)
        scale = self.min_scale + (self.max_scale - self.min_scale) * r[..., 0]
        aspect = self.min_aspect_ratio + (self.max_aspect_ratio - self.min_aspect_ratio) * r[..., 1]
        aspect = torch.minimum(torch.maximum(aspect, scale ** 2), 1.0 / scale ** 2)
        bw, bh = scale * aspect.sqrt(), scale / aspect.sqrt()  # fractions of the image
        # snap to the pixels F.crop will cut, so the IoU and centre tests see the real crop
        cw = (bw * w).floor().clamp(1, w)
        ch = (bh * h).floor().clamp(1, h)
        left = (r[..., 2] * (w - cw)).floor()
        top = (r[..., 3] * (h - ch)).floor()
        crops = torch.stack([left, top, left + cw, top + ch], dim=-1)  # (s, t, 4)
        iou = box_iou(crops.reshape(-1, 4), xyxy).reshape(s, t, -1)
        cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
        inside = ((cx >= crops[..., 0:1]) & (cx <= crops[..., 2:3]) & (cy >= crops[..., 1:2])
                  & (cy <= crops[..., 3:4]))  # (s, t, G)
        ok = inside.any(-1)
        for k, m in enumerate(self.min_ious):
            if m is not None:
                ok[k] &= (iou[k] >= m).any(-1)
        found = [(k, int(ok[k].nonzero()[0])) for k in range(s) if ok[k].any()]
        pick = int(torch.randint(len(found) + 1, ()))  # + 1: the whole-image sampler always succeeds
        if pick == len(found):
            return {}
        k, j = found[pick]
        return dict(top=int(top[k, j]), left=int(left[k, j]), height=int(ch[k, j]), width=int(cw[k, j]),
                    is_within_crop_area=inside[k, j])

    _get_params = make_params  # torchvision < 0.21 calls the private name


def target_tensors(sample) -> Tuple[torch.Tensor, ...]:
    """SanitizeBoundingBoxes' ``labels_getter``: every per-box tensor of the target. A module-level
    function (not a lambda) so that transforms pickle into spawn-started DataLoader workers."""
    target = sample[1]
    return tuple(target[k] for k in ("labels", "difficult", "iscrowd") if k in target)


class ToNetworkInput:
    """uint8 RGB (3, S, S) -> float32 BGR minus the mean (ORIGINAL.md §1.1); boxes -> float32
    xyxy / (S_w, S_h)."""

    def __init__(self, mean_bgr: Sequence[float] = PIXEL_MEAN_BGR):
        self.mean_bgr = tuple(float(v) for v in mean_bgr)

    def __call__(self, image: torch.Tensor, target: Dict[str, Any]):
        x = to_network_input(image, self.mean_bgr)
        h, w = x.shape[-2:]
        out = dict(target)
        boxes = target["boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)
        # clamp: float rounding in flips/resizes can leave -1e-7 or 1 + 1e-7, outside the [0, 1] contract
        out["boxes"] = (boxes / torch.tensor([w, h, w, h], dtype=torch.float32)).clamp_(0.0, 1.0)
        return x, out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean_bgr={self.mean_bgr})"


def size_hw(size) -> Tuple[int, int]:
    """An output size given as ``S`` or ``(H, W)`` -> ``(H, W)``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
