"""Inference fast path: ``fuse_for_inference(model)`` returns an eval-only module that computes the same
``HeadOutputs`` as the DSOD it was made from (up to float rounding), faster on the CPU.

What is folded, and why it is exact (eval mode, BN with running statistics):

- **Post-activation BN** (stem Conv -> BN -> ReLU; head conv -> BN): BN(conv(x)) is a per-output-channel
  affine of a linear map, so it becomes the conv's weights and a bias: W' = W * s, b' = beta - mean * s
  with s = gamma / sqrt(var + eps).
- **The BN of the next layer's input** wherever a conv feeds exactly one pre-activation BN (inside a
  dense layer: Conv1x1(B) -> [BN -> ReLU] -> Conv3x3(k); LHRH's learned half: Conv1x1(n) -> [BN -> ReLU]
  -> Conv3x3/2; the depthwise chains): the BN moves into the producing conv, the ReLU stays and runs
  fused in the conv (oneDNN post-op) when available.
- **Pre-activation BN whose input is shared** (each dense layer reads the whole concat, each with its
  own BN; transitions; the reused halves): these cannot move into a conv because the ReLU sits between
  BN and the conv that follows, and the convs that produced those channels feed several different BNs.
  They become a precomputed per-channel affine fused with the ReLU (one ``addcmul`` + in-place ReLU,
  no statistics arithmetic per call). Exported to ONNX, the same affine is a depthwise 1x1 Conv + ReLU
  (see ``PreAct``).
- **L2Norm's per-channel scale** multiplies the head conv's input channels, so it folds into the
  loc/conf weights; only the parameter-free normalisation stays. loc and conf convs read the same
  input, so they run as one conv with concatenated output channels.
- **Dense blocks write into one pre-allocated feature buffer** (block input, then each layer's k new
  channels into its slice) instead of re-concatenating a growing tensor at every layer.
- Channels-last memory format (``channels_last=None`` picks it on CPU, where oneDNN convolutions run
  natively in NHWC and it measured faster in ``dsod bench``).

GroupNorm layers (``norm=gn``) depend on the data, so they are kept as modules (no folding there).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .detector import DSOD, HeadOutputs
from .layers import ConvNormReLU, DenseBlock, NormReLUConv, max_pool_ceil
from .neck import LHRH, DensePrediction, PlainPrediction


def _has_mkldnn_pointwise() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except Exception:  # noqa: BLE001 - any failure to look the op up means "not available"
        return False


_MKLDNN_POINTWISE = _has_mkldnn_pointwise()


def _exporting() -> bool:
    """Tracing for ONNX / TorchScript: use only plain, exportable ops (no in-place buffer writes)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None


def bn_affine(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = x * scale + shift (computed in float64, returned in the BN's dtype)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    dtype = bn.running_var.dtype
    return scale.to(dtype), shift.to(dtype)


def fold_bn_into_conv(conv: nn.Conv2d, bn: Optional[nn.Module]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Weights and bias of conv followed by eval BN (exact up to rounding)."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if bn is None:
        return w.clone(), (b.clone() if b is not None else None)
    scale, shift = bn_affine(bn)
    w2 = (w.double() * scale.double().view(-1, 1, 1, 1)).to(w.dtype)
    b2 = shift.double() + (b.double() * scale.double() if b is not None else 0.0)
    return w2, b2.to(w.dtype)


class PreAct(nn.Module):
    """Pre-activation BN -> ReLU as one precomputed per-channel affine and an in-place ReLU."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        scale, shift = bn_affine(bn)
        self.register_buffer("scale", scale.view(1, -1, 1, 1).contiguous())
        self.register_buffer("shift", shift.view(1, -1, 1, 1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            # In ONNX the affine is a depthwise 1x1 Conv (+ ReLU), not Mul + Add: ONNX Runtime fuses
            # Conv+ReLU and keeps the whole backbone in its blocked NCHWc layout (a Mul/Add forces a
            # reorder back to NCHW around every dense layer), and the int8 model gets one QLinearConv
            # with the ReLU in its output clamp instead of QLinearMul + QLinearAdd. Measured on the BCCD
            # model, one thread: ORT fp32 58.2 -> 51.4 ms, int8 63.2 -> 59.6 ms (docs/PERFORMANCE.md).
            # Eager PyTorch keeps addcmul: there oneDNN's depthwise 1x1 conv measured ~3x slower.
            c = self.scale.shape[1]
            return F.relu(F.conv2d(x, self.scale.reshape(c, 1, 1, 1), self.shift.reshape(c), groups=c))
        return torch.addcmul(self.shift, x, self.scale).relu_()


class NormReLU(nn.Module):
    """Fallback for norms that depend on the data (GroupNorm): norm then ReLU, unfolded."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(x), inplace=True)


def pre_activation(norm: nn.Module) -> nn.Module:
    return PreAct(norm) if _is_bn(norm) else NormReLU(norm)


class ConvAct(nn.Module):
    """Conv2d with folded weights/bias, optionally followed by ReLU. On CPU fp32 it runs as one oneDNN
    call with the ReLU as a post-op (``mkldnn._convolution_pointwise``, the op Inductor emits), else
    ``conv2d`` + in-place ReLU."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
                 groups: int, relu: bool):
        super().__init__()
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias.contiguous() if bias is not None else None)
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.groups = groups
        self.relu = relu
        self.use_mkldnn = _MKLDNN_POINTWISE

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: Optional[nn.Module] = None, relu: bool = False) -> "ConvAct":
        w, b = fold_bn_into_conv(conv, bn)
        return cls(w, b, conv.stride[0], conv.padding[0], conv.groups, relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_mkldnn and x.device.type == "cpu" and x.dtype == torch.float32 and not _exporting():
            if not x.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous()
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, list(self.padding), list(self.stride), [1, 1], self.groups,
                "relu" if self.relu else "none", [], "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        return y.relu_() if self.relu else y


def fuse_chain(chain: Sequence[NormReLUConv]) -> nn.Sequential:
    """[BN-ReLU-Conv]_0 ... [BN-ReLU-Conv]_m -> PreAct_0, Conv_0(+BN_1, ReLU), ..., Conv_m.

    Each BN after the first reads only the previous conv's output, so it folds into that conv."""
    mods: List[nn.Module] = [pre_activation(chain[0][0])]
    for i, unit in enumerate(chain):
        conv = unit[2]
        nxt = chain[i + 1][0] if i + 1 < len(chain) else None
        if nxt is not None and _is_bn(nxt):
            mods.append(ConvAct.from_conv(conv, nxt, relu=True))
        else:
            mods.append(ConvAct.from_conv(conv))
            if nxt is not None:
                mods.append(NormReLU(nxt))
    return nn.Sequential(*mods)


def _flatten_units(module: nn.Module) -> List[NormReLUConv]:
    """The NormReLUConv units of a (nested) Sequential, in order."""
    if isinstance(module, NormReLUConv):
        return [module]
    units: List[NormReLUConv] = []
    for child in module.children():
        units.extend(_flatten_units(child))
    return units


def _post_act(unit: ConvNormReLU) -> nn.Module:
    conv, norm = unit[0], unit[1]
    if _is_bn(norm):
        return ConvAct.from_conv(conv, norm, relu=True)
    return nn.Sequential(ConvAct.from_conv(conv), NormReLU(norm))


class FusedDenseBlock(nn.Module):
    """Dense block writing every layer's new channels into one pre-allocated buffer."""

    def __init__(self, block: DenseBlock):
        super().__init__()
        self.layers = nn.ModuleList(fuse_chain(_flatten_units(layer.layers)) for layer in block.layers)
        self.growth = [layer.layers[-1][2].out_channels for layer in block.layers]
        self.out_channels = block.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exporting():
            for layer in self.layers:
                x = torch.cat([x, layer(x)], dim=1)
            return x
        n, c, h, w = x.shape
        fmt = torch.channels_last if (x.dim() == 4 and not x.is_contiguous()
                                      and x.is_contiguous(memory_format=torch.channels_last)) \
            else torch.contiguous_format
        buf = torch.empty((n, self.out_channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
        buf[:, :c].copy_(x)
        for layer, k in zip(self.layers, self.growth):
            buf[:, c:c + k].copy_(layer(buf[:, :c]))
            c += k
        return buf


class FusedBackbone(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        stem = backbone.stem
        self.use_stem = stem.use_stem
        units = list(stem.convs) if stem.use_stem else [stem.convs]
        self.stem = nn.Sequential(*[_post_act(u) for u in units])
        self.blocks = nn.ModuleList(FusedDenseBlock(b) for b in backbone.blocks)
        self.transitions = nn.ModuleList(fuse_chain([t.conv]) for t in backbone.transitions)
        self.pool = [t.pool for t in backbone.transitions]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        x = max_pool_ceil(x) if self.use_stem else F.max_pool2d(x, 3, 2, 1)
        first = first_pooled = x
        for i, (block, transition, pool) in enumerate(zip(self.blocks, self.transitions, self.pool)):
            conv_out = transition(block(x))
            x = max_pool_ceil(conv_out) if pool else conv_out
            if i == 1:
                first, first_pooled = conv_out, x
        return first, first_pooled, x


class FusedLHRH(nn.Module):
    def __init__(self, block: LHRH):
        super().__init__()
        self.learned = fuse_chain(_flatten_units(block.learned))
        self.reused = fuse_chain([block.reused])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.reused(max_pool_ceil(x)), self.learned(x)], dim=1)


class FusedDensePrediction(nn.Module):
    def __init__(self, neck: DensePrediction):
        super().__init__()
        self.second_reused = fuse_chain([neck.second_reused])
        self.extras = nn.ModuleList(FusedLHRH(b) for b in neck.extras)

    def forward(self, taps):
        first, first_pooled, out = taps
        reused = first_pooled
        while reused.shape[-1] > out.shape[-1]:
            reused = max_pool_ceil(reused)
        x = torch.cat([out, self.second_reused(reused)], dim=1)
        sources = [first, x]
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources


class FusedPlainPrediction(nn.Module):
    def __init__(self, neck: PlainPrediction):
        super().__init__()
        self.extras = nn.ModuleList(fuse_chain(_flatten_units(b)) for b in neck.extras)

    def forward(self, taps):
        first, _, x = taps
        sources = [first, x]
        for block in self.extras:
            x = block(x)
            sources.append(x)
        return sources


def _l2_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + eps)


class FusedHead(nn.Module):
    """Per source: parameter-free L2 normalisation, then one conv producing [loc | conf] channels
    (L2Norm scale folded into the input channels, head BN into the output channels)."""

    def __init__(self, head):
        super().__init__()
        self.num_classes = head.num_classes
        self.eps = [l2.eps for l2 in head.l2norms]
        self.branches = nn.ModuleList()
        self.loc_channels: List[int] = []
        for l2, loc, conf in zip(head.l2norms, head.loc, head.conf):
            self.loc_channels.append(self._out_channels(loc))
            self.branches.append(self._fuse(l2.weight.detach(), loc, conf))

    @staticmethod
    def _out_channels(seq: nn.Sequential) -> int:
        return [m for m in seq if isinstance(m, nn.Conv2d)][-1].out_channels

    @staticmethod
    def _fold_branch(l2w: torch.Tensor, seq: nn.Sequential) -> List[Tuple[nn.Conv2d, torch.Tensor, Optional[torch.Tensor]]]:
        convs = [m for m in seq if isinstance(m, nn.Conv2d)]
        norm = seq[-1]
        out = []
        for i, conv in enumerate(convs):
            last = i == len(convs) - 1
            w, b = fold_bn_into_conv(conv, norm if (last and _is_bn(norm)) else None)
            if i == 0:  # L2Norm's per-channel scale multiplies this conv's input channels
                if conv.groups == 1:
                    w = w * l2w.view(1, -1, 1, 1).to(w.dtype)
                else:  # depthwise: output channel c reads input channel c
                    w = w * l2w.view(-1, 1, 1, 1).to(w.dtype)
            out.append((conv, w, b))
        return out

    def _fuse(self, l2w: torch.Tensor, loc: nn.Sequential, conf: nn.Sequential) -> nn.Module:
        loc_f, conf_f = self._fold_branch(l2w, loc), self._fold_branch(l2w, conf)
        gn = not _is_bn(loc[-1])
        if len(loc_f) == 1 and len(conf_f) == 1 and not gn:
            (c, wl, bl), (_, wc, bc) = loc_f[0], conf_f[0]
            return ConvAct(torch.cat([wl, wc]), torch.cat([bl, bc]), c.stride[0], c.padding[0], 1, False)

        def branch(folded, seq):
            mods: List[nn.Module] = [ConvAct(w, b, c.stride[0], c.padding[0], c.groups, False) for c, w, b in folded]
            if gn:
                mods.append(seq[-1])
            return nn.Sequential(*mods)

        return _TwoBranch(branch(loc_f, loc), branch(conf_f, conf))

    def forward(self, sources: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        n = sources[0].shape[0]
        if _exporting():
            locs, confs = [], []
            for x, eps, branch, lc in zip(sources, self.eps, self.branches, self.loc_channels):
                y = branch(_l2_normalize(x, eps)).permute(0, 2, 3, 1)
                locs.append(y[..., :lc].reshape(n, -1, 4))
                confs.append(y[..., lc:].reshape(n, -1, self.num_classes))
            return torch.cat(locs, dim=1), torch.cat(confs, dim=1)
        maps, total = [], 0
        for x, eps, branch, lc in zip(sources, self.eps, self.branches, self.loc_channels):
            y = branch(_l2_normalize(x, eps))
            a = lc // 4
            maps.append((y, a))
            total += y.shape[-2] * y.shape[-1] * a
        ref = sources[0]
        locs = ref.new_empty((n, total, 4))
        confs = ref.new_empty((n, total, self.num_classes))
        off = 0
        for (y, a), lc in zip(maps, self.loc_channels):
            h, w = y.shape[-2:]
            cnt = h * w * a
            nhwc = y.permute(0, 2, 3, 1)  # free in channels-last
            locs[:, off:off + cnt].view(n, h, w, lc).copy_(nhwc[..., :lc])
            confs[:, off:off + cnt].view(n, h, w, a * self.num_classes).copy_(nhwc[..., lc:])
            off += cnt
        return locs, confs


class _TwoBranch(nn.Module):
    """Separate loc/conf branches (depthwise or GroupNorm heads) with the [loc | conf] output layout."""

    def __init__(self, loc: nn.Module, conf: nn.Module):
        super().__init__()
        self.loc, self.conf = loc, conf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.loc(x), self.conf(x)], dim=1)


class FusedDSOD(nn.Module):
    """Eval-only DSOD with folded BNs, pre-allocated dense blocks and (by default on CPU) channels-last.

    Same call and output as ``DSOD``: ``forward(images) -> HeadOutputs``; ``anchors_cxcywh`` and
    ``config`` carried over. Parameters are frozen buffers: it cannot be trained.
    """

    def __init__(self, model: DSOD, channels_last: bool):
        super().__init__()
        self.backbone = FusedBackbone(model.backbone)
        if isinstance(model.neck, DensePrediction):
            self.neck = FusedDensePrediction(model.neck)
        elif isinstance(model.neck, PlainPrediction):
            self.neck = FusedPlainPrediction(model.neck)
        else:
            raise TypeError(f"fuse_for_inference: unknown prediction structure {type(model.neck).__name__}")
        self.head = FusedHead(model.head)
        self.register_buffer("anchors_cxcywh", model.anchors_cxcywh.detach().clone(), persistent=False)
        self.config = getattr(model, "config", None)
        self.channels_last = channels_last
        self.num_threads: Optional[int] = None  # intra-op threads for forward (None: leave as set)
        self.eval()

    def train(self, mode: bool = True) -> "FusedDSOD":
        if mode:
            raise RuntimeError("FusedDSOD is inference-only; train the original DSOD model")
        return super().train(False)

    def forward_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(images))

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        prev = None
        if self.num_threads and self.num_threads != torch.get_num_threads():
            prev = torch.get_num_threads()
            torch.set_num_threads(self.num_threads)
        try:
            with torch.no_grad():
                return HeadOutputs(*self.head(self.forward_features(images)))
        finally:
            if prev is not None:
                torch.set_num_threads(prev)


def fuse_for_inference(model: DSOD, channels_last: Optional[bool] = None, mkldnn_fusion: Optional[bool] = None,
                       num_threads: Optional[int] = None) -> FusedDSOD:
    """An equivalent, faster, eval-only module (see the module docstring for what is folded).

    Args:
        model: a ``DSOD`` (its current BN running statistics are used; the model itself is untouched).
        channels_last: NHWC activations; None -> True on CPU.
        mkldnn_fusion: run conv+bias+ReLU as one oneDNN call; None -> when available (CPU build with
            oneDNN). With False, plain ``conv2d`` + ReLU (e.g. to compare in ``dsod bench``).
        num_threads: intra-op threads used during forward (restored afterwards); None leaves torch's
            setting. ``dsod bench`` times 1..N threads: on a machine shared with other jobs one thread
            can be many times faster than two (OpenMP barriers wait for descheduled threads).
    """
    if not isinstance(model, DSOD):
        raise TypeError(f"fuse_for_inference expects a DSOD model, got {type(model).__name__}")
    if model.config.backbone != "dsod":
        raise ValueError(f"fuse_for_inference supports the DSOD backbone only, not '{model.config.backbone}'")
    device = model.anchors_cxcywh.device
    if channels_last is None:
        channels_last = device.type == "cpu"
    fused = FusedDSOD(model, channels_last).to(device)
    fused.num_threads = num_threads
    use = _MKLDNN_POINTWISE if mkldnn_fusion is None else (bool(mkldnn_fusion) and _MKLDNN_POINTWISE)
    for m in fused.modules():
        if isinstance(m, ConvAct):
            m.use_mkldnn = use
            if channels_last and m.weight.dim() == 4:
                m.weight = m.weight.contiguous(memory_format=torch.channels_last)
    return fused
