"""The one test-time preprocessing: every path that feeds a trained network an image uses it.

``dsod val`` (through ``transforms.eval_transform`` in the dataset), ``dsod predict`` (``Detector``), the ONNX
Runtime backend, ``dsod export``'s verification images and int8 calibration all call ``preprocess`` /
``eval_transform`` below, so that the mAP ``dsod val`` reports is measured on the pixels that are
served. (Before, val resized with torchvision's bilinear without antialiasing and predict/ONNX with
PIL's bilinear, which antialiases when shrinking: other pixels, other detections.)

The network input is the original code's test transform: a warp-resize of the whole image to S x S
(no letterbox), channels in BGR order, 0-255 minus the per-channel mean (104, 117, 123), no std
(SSD/DSOD Caffe ``test.prototxt``: ``resize_param`` + ``mean_value``).

``RESIZE_ANTIALIAS``: Caffe resizes with OpenCV's ``INTER_LINEAR``, which does not antialias; our
training pipelines render their last resize with antialiased bilinear (``augment="light"``) or one of
five interpolations drawn at random (``"ssd"``, as Caffe's ``interp_mode``). Which one is served was
decided by measurement on the BCCD recipe model (docs/PERFORMANCE.md, "One preprocessing").
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from ..config import PIXEL_MEAN_BGR

RESIZE_INTERPOLATION = InterpolationMode.BILINEAR
RESIZE_ANTIALIAS = False

Size = Union[int, Tuple[int, int], Sequence[int]]


def _hw(size: Size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def eval_resize(size: Size) -> v2.Resize:
    """The test-time warp-resize to ``size`` (int or (h, w)) as a transforms.v2 step (boxes follow)."""
    return v2.Resize(_hw(size), interpolation=RESIZE_INTERPOLATION, antialias=RESIZE_ANTIALIAS)


def to_network_input(image: torch.Tensor, mean_bgr: Sequence[float] = PIXEL_MEAN_BGR) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float32 BGR minus the mean (3, H, W), contiguous."""
    mean = torch.as_tensor(mean_bgr, dtype=torch.float32).view(3, 1, 1)
    return (image.as_subclass(torch.Tensor).flip(0).to(torch.float32) - mean).contiguous()


def preprocess(rgb: Union[np.ndarray, torch.Tensor], size: Size) -> torch.Tensor:
    """RGB uint8 image, (H, W, 3) array or (3, H, W) tensor -> network input float32 (3, S, S): the same
    pixels as ``transforms.eval_transform(size)`` gives ``dsod val``."""
    if isinstance(rgb, np.ndarray):
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image of shape {rgb.shape}: expected (H, W, 3) RGB uint8")
        # a copy only where needed: read-only arrays (np.asarray of a PIL image) included
        image = torch.from_numpy(np.require(rgb, dtype=np.uint8, requirements=["C", "W"])).permute(2, 0, 1)
    else:
        image = rgb
    return to_network_input(eval_resize(size)(image))


def preprocess_batch(images: Sequence[Union[np.ndarray, torch.Tensor]], size: Size) -> torch.Tensor:
    """``preprocess`` of each image, stacked (N, 3, S, S)."""
    return torch.stack([preprocess(im, size) for im in images])
