"""Frozen configuration dataclasses and the named model presets.

Conventions fixed once for the whole package:
- class index 0 of the network's confidence output is background; dataset class ``c`` (its index in
  ``names``) is network class ``c + 1``. ``num_classes`` counts background (21 for VOC, as in Caffe).
- dataset boxes are ``xyxy`` in pixels; default boxes and regression targets are ``cxcywh``
  normalised to [0, 1] of the network input.
- network input: float tensor (N, 3, H, W), BGR, 0-255 minus the mean (104, 117, 123), no std
  scaling (ORIGINAL.md §1.1, the original Caffe data layer).

Presets live here (not in the CLI) so that the Python API and the CLI build exactly the same models;
``build_model`` in ``dsod.model.factory`` is the only place a config becomes modules.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

# Spec §1.1: BGR means of the original data layer; no std scaling.
PIXEL_MEAN_BGR = (104.0, 117.0, 123.0)


@dataclass(frozen=True)
class AnchorConfig:
    """Default-box settings (SSD PriorBox semantics, ORIGINAL.md §1.5).

    Sizes follow SSD's ``ssd_pascal.py`` rule: with ``m`` sources, step = floor((max-min)/(m-2)),
    min sizes at ratios min, min+step, ... (percent of the input), each max size one step further,
    and a prepended first scale ``first_sizes``.
    """

    size_ratios: Tuple[int, int] = (20, 90)  # (min_ratio, max_ratio) in percent; COCO uses (15, 90)
    first_sizes: Tuple[float, float] = (10.0, 20.0)  # percent: min/max size of the first source
    # Aspect ratios per source (flip adds 1/r). None -> [2] on the first and last two sources, [2, 3]
    # elsewhere (the DSOD300/SSD300 pattern, also SSD512's for 7 sources).
    aspect_ratios: Optional[Tuple[Tuple[float, ...], ...]] = None
    # Centre spacing in input pixels per source. None -> input_size / feature_size (uniform cover).
    # DSOD300 sets SSD's (8, 16, 32, 64, 100, 300) to reproduce the original, 2x2 quirk included.
    steps: Optional[Tuple[float, ...]] = None
    offset: float = 0.5
    clip: bool = False  # ORIGINAL.md §1.5: clip false
    variances: Tuple[float, float] = (0.1, 0.2)  # centre, size (ORIGINAL.md §1.5)
    # Explicit min/max size per source in percent of the input, both or neither. None -> the SSD rule
    # above. Set by ``model.anchor_fit`` (``anchors=auto``): sizes fitted to a dataset follow no
    # two-number rule, and an explicit list keeps a fitted checkpoint self-contained (older
    # checkpoints lack the fields and load with the rule).
    min_sizes: Optional[Tuple[float, ...]] = None
    max_sizes: Optional[Tuple[float, ...]] = None


@dataclass(frozen=True)
class ModelConfig:
    """One DSOD network. Paper notation DS/A-B-k-theta: A = ``stem_channels``,
    B = ``bottleneck_width``, k = ``growth_rate``, theta = ``compression``."""

    name: str = "dsod300"
    # "dsod" (stem + dense blocks, ORIGINAL.md §1.2) or "vgg": SSD's VGG-16 with BN, for the paper's SSD300
    # from-scratch comparison (model/vgg.py); ``vgg_width`` scales its channels.
    backbone: str = "dsod"
    vgg_width: float = 1.0
    num_classes: int = 21  # including background (VOC: 20 + 1)
    image_size: int = 300  # square warp-resized input (ORIGINAL.md §1.7/§1.8)
    # --- backbone (ORIGINAL.md §1.2) ---
    stem: bool = True  # True: 3x3 s2 (A), 3x3 (A), 3x3 (2A), maxpool; False: DenseNet's 7x7 s2 + 3x3 pool
    stem_channels: int = 64  # A: width of the first conv
    growth_rate: int = 48  # k: channels each dense layer adds
    bottleneck_width: int = 192  # B: channels of the 1x1 bottleneck (4k in the released code)
    block_config: Tuple[int, ...] = (6, 8, 8, 8)  # dense layers per block
    # Does the transition after each block max-pool? The first two must (they make the stride-8
    # "First" source and the stride-16 maps); the rest are the paper's "transition w/o pooling".
    transition_pooling: Tuple[bool, ...] = (True, True, False, False)
    compression: float = 1.0  # theta: transition output = floor(theta * input channels)
    depthwise: bool = False  # Tiny-DSOD-style depthwise 3x3 convs in dense layers, neck and heads
    # --- prediction structure (ORIGINAL.md §1.3) ---
    prediction: str = "dense"  # "dense" (learned half + reused half) or "plain" (SSD-style chain)
    # [0]: width of each half of scale 2 (learned: last transition; reused: pool(First) -> 1x1);
    # [1:]: width n of each LHRH block after it (one more source each). Plain uses 2n-wide extras.
    prediction_widths: Tuple[int, ...] = (256, 256, 128, 128, 128)
    # --- normalisation ---
    norm: str = "bn"  # "bn" (Caffe-style BatchNorm) or "gn" (GroupNorm, for tiny per-device batches)
    # Caffe moving_average_fraction (ORIGINAL.md §1.1). We reproduce Caffe's bias-corrected running average
    # (see layers.CaffeBatchNorm2d) rather than PyTorch momentum 0.001, which would leave the running
    # statistics near their initial values for the first thousands of iterations.
    bn_decay: float = 0.999
    head_bn_eps: float = 1e-3  # ORIGINAL.md §1.4
    l2norm_init: float = 20.0  # ORIGINAL.md §1.4, all sources
    # Memory-efficient dense blocks (training only): recompute each dense layer's concat + BN + ReLU
    # in backward instead of storing them (torch.utils.checkpoint, convolutions are never re-run).
    # Same parameters and outputs; DSOD300 training memory per image 0.39 -> 0.13 GB (peak RSS, with
    # dsod train's allocator setting) for ~5-8% time (docs/PERFORMANCE.md). Also covers the stem,
    # the transition pooling and the heads' L2Norm.
    # On in the DSOD300/DSOD512 presets (see below).
    memory_efficient: bool = False
    anchors: AnchorConfig = field(default_factory=AnchorConfig)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        if self.backbone == "vgg":
            return f"VGG-16 (BN, width x{self.vgg_width:g}), {self.prediction} prediction"
        theta = f"{self.compression:g}"
        return (
            f"DS/{self.stem_channels}-{self.bottleneck_width}-{self.growth_rate}-{theta}, "
            f"{'stem' if self.stem else 'no stem'}, {self.prediction} prediction, "
            f"blocks {'-'.join(map(str, self.block_config))}"
            f"{', depthwise' if self.depthwise else ''}"
        )


# Spec §1.5: SSD's hand-set steps for 300x300; the 2x2 source keeps step 300 (centres at 150 and
# 450 px), the quirk of the released code that gives 8744 default boxes.
_SSD300_STEPS = (8, 16, 32, 64, 100, 300)
# memory_efficient: on for the full-size family (DSOD300, DSOD512 and the presets derived from them),
# where it cuts training memory per image (0.39 -> 0.13 GB at 300 px) for ~5-8% time; off for the
# small depthwise presets, whose activations are small anyway (docs/PERFORMANCE.md).
DSOD300 = ModelConfig(anchors=AnchorConfig(steps=_SSD300_STEPS), memory_efficient=True)

# Spec §1.10: same body at 512 -> 7 sources (64, 32, 16, 8, 4, 2, 1). No prior configuration was
# published; we use SSD512's (first scale 4%/10%, ratios 15..90, steps = 512 / map = 8..512).
DSOD512 = ModelConfig(
    name="dsod512",
    image_size=512,
    memory_efficient=True,
    prediction_widths=(256, 256, 128, 128, 128, 128),
    anchors=AnchorConfig(size_ratios=(15, 90), first_sizes=(4.0, 10.0)),
)


def _ablation(name: str, **kw) -> ModelConfig:
    return DSOD300.replace(name=name, **kw)


# Paper ablation (ORIGINAL.md §3.1), one preset per row, cumulative. The baseline's "3 dense blocks" is read
# as blocks 1-3 of DSOD300 with a final 1x1 transition; its stem is DenseNet's 7x7 conv + pool.
_A = dict(stem=False, stem_channels=32, bottleneck_width=12, growth_rate=16, prediction="plain")
ABLATION = {
    "ablation-1-baseline": _ablation(
        "ablation-1-baseline", **_A, compression=0.5, block_config=(6, 8, 8),
        transition_pooling=(True, True, False)),
    "ablation-2-trans-wo-pool": _ablation("ablation-2-trans-wo-pool", **_A, compression=0.5),
    "ablation-3-theta1": _ablation("ablation-3-theta1", **_A),
    "ablation-4-wide-bottleneck": _ablation("ablation-4-wide-bottleneck", **{**_A, "bottleneck_width": 64}),
    "ablation-5-wide-first-conv": _ablation(
        "ablation-5-wide-first-conv", **{**_A, "bottleneck_width": 64, "stem_channels": 64}),
    "ablation-6-big-growth": _ablation("ablation-6-big-growth", stem=False, prediction="plain"),
    "ablation-7-stem": _ablation("ablation-7-stem", prediction="plain"),
    "ablation-8-dense-pred": _ablation("ablation-8-dense-pred"),
}

# The paper's principles at CPU scale (docs/RESULTS.md, ``python -m dsod.experiments ablation``): one
# small non-depthwise DSOD, DS/16-64-16-1 with blocks 3-4-4-4 at 224 px, and one preset per changed
# principle. Everything else (default boxes, heads, loss) stays the same within the family.
_CPU = ModelConfig(name="cpu-dsod", image_size=224, stem_channels=16, growth_rate=16, bottleneck_width=64,
                   block_config=(3, 4, 4, 4), prediction_widths=(64, 64, 48, 32, 32),
                   anchors=AnchorConfig(size_ratios=(15, 90), first_sizes=(6.0, 12.0)))
CPU_ABLATION = {
    "cpu-dsod": _CPU,
    "cpu-plain": _CPU.replace(name="cpu-plain", prediction="plain"),
    "cpu-no-stem": _CPU.replace(name="cpu-no-stem", stem=False),
    "cpu-trans-pool": _CPU.replace(name="cpu-trans-pool", transition_pooling=(True, True, True, False)),
    "cpu-k8": _CPU.replace(name="cpu-k8", growth_rate=8, bottleneck_width=32),
    # SSD's VGG-16 (with BN) from scratch, width x1/8: 0.70 M parameters vs cpu-dsod's 0.74 M
    "cpu-ssd-vgg": _CPU.replace(name="cpu-ssd-vgg", backbone="vgg", vgg_width=0.125, prediction="plain"),
}

PRESETS = {
    "dsod300": DSOD300,
    "dsod512": DSOD512,
    "dsod300-plain": _ablation("dsod300-plain", prediction="plain"),
    # Spec §1.5, DSOD300_coco.py: min_ratio 15 -> default-box sizes 21/45, 45/99, ... 261/315 px.
    "dsod300-coco": _ablation("dsod300-coco", anchors=AnchorConfig(size_ratios=(15, 90), first_sizes=(7.0, 15.0),
                                                                  steps=_SSD300_STEPS)),
    # Spec §1.11: DS/64-64-16-1 with dense prediction = "DSOD300_smallest" (5.9M, 73.6 mAP).
    "dsod300-smallest": _ablation("dsod300-smallest", growth_rate=16, bottleneck_width=64),
    # Small presets for CPUs and embedded devices, in the spirit of Tiny-DSOD (depthwise dense
    # layers, narrow prediction layers). Uniform default-box steps: no SSD300 2x2 quirk.
    "dsod-tiny": ModelConfig(
        name="dsod-tiny", stem_channels=16, growth_rate=24, bottleneck_width=48,
        block_config=(4, 6, 6, 6), depthwise=True, prediction_widths=(64, 64, 48, 32, 32)),
    "dsod-nano": ModelConfig(
        name="dsod-nano", image_size=160, stem_channels=16, growth_rate=16, bottleneck_width=32,
        block_config=(3, 4, 4, 4), depthwise=True, prediction_widths=(48, 48, 32, 32)),
    # The BCCD recipe's preset (docs/RESULTS.md): dsod-tiny with default boxes fitted to small objects
    # (BCCD platelets are ~7% of the image, RBCs ~18%, WBCs ~34%): first source 6%/12% instead of
    # 10%/20%, the others by SSD's rule from 15% to 90% (COCO's ratios) instead of 20%-90%.
    "dsod-tiny-bccd": ModelConfig(
        name="dsod-tiny-bccd", stem_channels=16, growth_rate=24, bottleneck_width=48,
        block_config=(4, 6, 6, 6), depthwise=True, prediction_widths=(64, 64, 48, 32, 32),
        anchors=AnchorConfig(size_ratios=(15, 90), first_sizes=(6.0, 12.0))),
    **ABLATION,
    **CPU_ABLATION,
}


def get_config(name: str, **overrides) -> ModelConfig:
    """Preset ``name`` with field overrides (``num_classes=81`` ...). Unknown names raise ValueError
    listing the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model '{name}'; valid: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown model option(s) {', '.join(bad)}; valid: {', '.join(sorted(fields))}")
    return cfg.replace(**overrides)
