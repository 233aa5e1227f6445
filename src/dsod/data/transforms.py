"""SSD/DSOD augmentation (ORIGINAL.md §1.8) and evaluation transforms, on torchvision.transforms.v2.

A transform takes ``(image, target)``: ``image`` a ``tv_tensors.Image`` uint8 RGB (3, H, W) in
original pixels, ``target`` a dict with ``boxes`` (``tv_tensors.BoundingBoxes`` xyxy pixels),
``labels`` int64, ``difficult`` bool and optionally ``iscrowd`` bool. It returns the network input,
float32 (3, S, S) **BGR, 0-255 minus the mean (104, 117, 123), no std** (ORIGINAL.md §1.1), and the target
with ``boxes`` a float32 (G, 4) xyxy tensor **normalised to [0, 1] of the network input**.

Training pipeline (``reference_train_transform``), in SSD Caffe's order (ORIGINAL.md §1.8: distort -> expand
-> batch-sampler crop -> resize -> mirror); the image stays uint8, as in Caffe where every step
saturates an 8-bit ``cv::Mat``:

The steps below are defined in ``steps`` (shared with ``augment``):

1. ``SSDPhotometricDistort`` (hand-written, see its docstring for why not v2.RandomPhotometricDistort)
2. ``v2.RandomZoomOut`` (p 0.5, canvas 1-4x, filled with the pixel mean): same semantics as Caffe's
   expand (one ratio for both sides, uniform offset), so the built-in is used.
3. ``SSDBatchSamplerCrop`` (Caffe's 7 batch samplers; only ``make_params`` differs from
   v2.RandomIoUCrop, whose crop/centre-rule ``transform`` is reused)
4. ``v2.SanitizeBoundingBoxes`` drops the boxes the crop emptied (centre outside the crop) together
   with their labels/difficult flags. It runs right after the crop (min size 1 px in crop pixels) and
   not after the resize: SSD keeps every box whose centre is in the crop, however small, and matching
   gives even a tiny box its best default box (bipartite step, ORIGINAL.md §1.6).
5. warp-resize to S x S with an interpolation drawn at random (``v2.RandomChoice`` of ``v2.Resize``):
   OpenCV's linear/area/nearest/cubic/Lanczos4 map to bilinear without antialias / bilinear with
   antialias (area-like averaging when shrinking) / nearest / bicubic / Lanczos (antialiased, the only
   way torchvision offers it on tensors).
6. ``v2.RandomHorizontalFlip`` (p 0.5)
7. ``ToNetworkInput``: RGB -> BGR, minus the mean, boxes / S.

Negatives (no boxes) pass through every step (the crop keeps the whole image, as in Caffe where the
IoU-constrained samplers cannot be satisfied without a ground truth box).

``train_transform`` returns ``augment.SSDAugment`` for "ssd" and "light": the same random draws,
geometry and boxes as these steps, with the pixels resized before the (per-pixel) distortion and,
in ``DetectionDataset``, JPEGs decoded at reduced size (data loading must not be the
bottleneck); the output equals this pipeline's up to resampling (tests/test_data_speed.py).

Randomness comes only from torch's global RNG (like every v2 built-in), so seeding torch per sample
(``dataset.DetectionDataset`` with ``(index, seed)`` keys, ``data.sampler.ResumableBatchSampler``) makes the
augmentation reproducible and independent of the number of workers.
"""
from __future__ import annotations

from typing import Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from ..config import PIXEL_MEAN_BGR
from .augment import SSDAugment
from .preprocess import eval_resize

# the steps live in their own module so that augment (which reuses them) and this one form no cycle
from .steps import (
    PIXEL_MEAN_RGB,
    RESIZE_CHOICES,
    SSDBatchSamplerCrop,
    SSDPhotometricDistort,
    ToNetworkInput,
    size_hw,
    target_tensors,
)


class SeededTransform:
    """Wraps a transform so that its i-th call draws from ``torch.manual_seed(seed + i)`` inside
    ``torch.random.fork_rng`` (the caller's RNG stream is untouched): a reproducible stream of
    augmentations for one process (notebooks, ``check``'s sample grid, tests). In DataLoader workers
    every copy would restart at call 0, so loaders use per-sample ``(index, seed)`` keys instead
    (``dataset.build_dataloader``)."""

    def __init__(self, transform, seed: int):
        self.transform, self.seed, self.calls = transform, int(seed), 0

    def __call__(self, *inputs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.calls)
            self.calls += 1
            return self.transform(*inputs)

    def __repr__(self) -> str:
        return f"SeededTransform(seed={self.seed}, {self.transform!r})"


AUGMENT_MODES = ("ssd", "light", "none")


def augment_mode(value) -> str:
    """Normalise an ``augment`` setting: True -> "ssd", False -> "none", or one of ``AUGMENT_MODES``."""
    if value is True or value is False:
        return "ssd" if value else "none"
    low = str(value).lower()
    aliases = {"true": "ssd", "1": "ssd", "yes": "ssd", "false": "none", "0": "none", "no": "none"}
    low = aliases.get(low, low)
    if low not in AUGMENT_MODES:
        raise ValueError(f"augment={value} is not valid; choose one of: {', '.join(AUGMENT_MODES)}")
    return low


def train_transform(size=300, seed: Optional[int] = None, mode: str = "ssd", flipud: float = 0.0):
    """The training augmentation to a warp-resized ``size`` (int or (h, w)) input: the recipe of
    ``reference_train_transform`` (below) for "ssd" and "light", computed by ``augment.SSDAugment``
    (same random draws, geometry and boxes; pixels rendered at the output size and, in
    ``DetectionDataset``, decoded at reduced size: equal up to resampling, 1.3-2.4x faster on 640x480
    images, 11-42x on 2048x1371 photos, docs/PERFORMANCE.md). "none" is the reference's warp-resize."""
    mode = augment_mode(mode)
    if mode == "none":
        return reference_train_transform(size, seed, mode, flipud)
    t = SSDAugment(size, mode=mode, flipud=flipud)
    return SeededTransform(t, seed) if seed is not None else t


def reference_train_transform(size=300, seed: Optional[int] = None, mode: str = "ssd", flipud: float = 0.0):
    """The training augmentation, step by step in Caffe's order on full-size pixels (the definition
    ``train_transform`` is tested against, and the "before" of ``benchmarks/bench_data.py``).

    ``mode``: "ssd" is the SSD Caffe recipe above (ORIGINAL.md §1.8). "light" is ours, for short CPU runs on
    small datasets whose objects are already small (measured on BCCD, docs/RESULTS.md): photometric
    distortion without the hue step (the most expensive one, ~40 ms per 640x480 image), no zoom-out
    (a 4x canvas shrinks platelets to a few pixels), the batch-sampler crop with scales 0.5-1 instead
    of 0.3-1, one (antialiased bilinear) resize and the mirror. "none": warp-resize only.
    ``flipud``: probability of a vertical flip as well (micrographs, aerial images; not photos).
    ``seed``: wrap it in ``SeededTransform`` (a reproducible stream for one process); without it the
    transform draws from torch's global RNG, which the data loader seeds per sample."""
    hw = size_hw(size)
    mode = augment_mode(mode)
    vflip = [v2.RandomVerticalFlip(p=flipud)] if flipud > 0 else []
    if mode == "none":
        steps = [v2.Resize(hw, interpolation=InterpolationMode.BILINEAR, antialias=False), *vflip]
    elif mode == "light":
        steps = [
            SSDPhotometricDistort(hue_delta_degrees=0.0),
            SSDBatchSamplerCrop(min_scale=0.5),
            v2.SanitizeBoundingBoxes(min_size=1, labels_getter=target_tensors),
            v2.Resize(hw, interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            *vflip,
        ]
    else:
        steps = [
            SSDPhotometricDistort(),
            v2.RandomZoomOut(fill={tv_tensors.Image: tuple(int(v) for v in PIXEL_MEAN_RGB), "others": 0},
                             side_range=(1.0, 4.0), p=0.5),
            SSDBatchSamplerCrop(),
            v2.SanitizeBoundingBoxes(min_size=1, labels_getter=target_tensors),
            v2.RandomChoice([v2.Resize(hw, interpolation=m, antialias=a) for m, a in RESIZE_CHOICES]),
            v2.RandomHorizontalFlip(p=0.5),
            *vflip,
        ]
    t = v2.Compose([*steps, ToNetworkInput()])
    return SeededTransform(t, seed) if seed is not None else t


def eval_transform(size=300) -> v2.Compose:
    """``(image, target)`` -> network input and target (boxes normalised to it) for ``dsod val`` and
    validation during training: the one test-time preprocessing (``preprocess.eval_resize`` and
    ``preprocess.to_network_input``, which ``dsod predict``, the ONNX backend and export also use).
    The dataset adds ``orig_size`` so predictions can be mapped back to original pixels."""
    return v2.Compose([eval_resize(size), ToNetworkInput()])


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Network input (3, H, W) BGR minus mean -> uint8 RGB (3, H, W) (for drawing)."""
    mean = torch.tensor(PIXEL_MEAN_BGR, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return (image.float() + mean).round().clamp(0, 255).to(torch.uint8).flip(0)
