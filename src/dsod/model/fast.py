"""Inference fast path: ``fuse_for_inference(model)`` returns an eval-only copy of a DSOD that computes the
same ``HeadOutputs`` (up to float rounding), faster on the CPU.

It works the way ``torch.ao.quantization.fuse_modules`` does: the model is deep-copied and only LEAF
modules are swapped (a fused module in the first slot of a pattern, ``nn.Identity`` in the others).
Every forward (backbone, dense blocks, LHRH, neck, head) stays the model's own, so a topology change is
made once, in the model. Patterns are matched inside ``nn.Sequential`` chains (``NormReLUConv`` and
``ConvNormReLU`` are Sequentials, and nested Sequentials are flattened), because there, and only
there, a module's output provably feeds exactly the next module.

What is folded, and why it is exact (eval mode, BN with running statistics):

- **Post-activation BN** (stem Conv -> BN -> ReLU; head conv -> BN): BN(conv(x)) is a per-output-channel
  affine of a linear map, so it becomes the conv's weights and a bias: W' = W * s, b' = beta - mean * s
  with s = gamma / sqrt(var + eps).
- **The BN of the next layer's input** wherever a conv feeds exactly one pre-activation BN (inside a
  dense layer: Conv1x1(B) -> [BN -> ReLU] -> Conv3x3(k); LHRH's learned half: Conv1x1(n) -> [BN -> ReLU]
  -> Conv3x3/2; the depthwise chains): in a chain that is the same pattern Conv -> BN -> ReLU, so the
  BN moves into the producing conv, the ReLU stays and runs fused in the conv (oneDNN post-op) when
  available.
- **Pre-activation BN whose input is shared** (the BN -> ReLU that starts a chain: each dense layer
  reads the whole concat, each with its own BN; transitions; the reused halves): these cannot move
  into a conv because the ReLU sits between BN and the conv that follows, and the convs that produced
  those channels feed several different BNs. They become a precomputed per-channel affine fused with
  the ReLU (``PreAct``: one ``addcmul`` + in-place ReLU, no statistics arithmetic per call). Exported
  to ONNX, the same affine is a depthwise 1x1 Conv + ReLU (see ``PreAct``).
- **L2Norm's per-channel scale** multiplies the head conv's input channels, so it folds into the
  loc/conf weights; only the parameter-free normalisation (``L2Normalize``) stays.
- Channels-last memory format (``channels_last=None`` picks it on CPU, where oneDNN convolutions run
  natively in NHWC and it measured faster in ``dsod bench``).

Dropped with the second forward they needed: dense blocks writing into one pre-allocated buffer, loc
and conf as one conv, the head writing into pre-allocated outputs. Measured (dsod300 300x300, batch 1,
one thread, best of 7 and of 12 runs on a 2-core machine shared with another job): the old hand-written
fused tree 445 / 529 ms, this copy 440 / 475 ms, this copy with a buffer-writing DenseBlock swapped in
468 / 466 ms: no gain above the noise (< 5%), so not kept.

GroupNorm layers (``norm=gn``) depend on the data, so they are kept as modules (no folding there).
The fused copy never sets the intra-op thread count: that is the caller's (runners, ``dsod bench``).
"""
from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .detector import DSOD, HeadOutputs
from .norms import L2Norm


def _has_mkldnn_pointwise() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except Exception:  # noqa: BLE001 - any failure to look the op up means "not available"
        return False


_MKLDNN_POINTWISE = _has_mkldnn_pointwise()


def _exporting() -> bool:
    """Tracing for ONNX / TorchScript: use only plain, exportable ops."""
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
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or len(set(conv.stride)) != 1 \
                or len(set(conv.padding)) != 1:
            raise ValueError(f"fuse_for_inference: unsupported convolution {conv}")  # none in DSOD
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


class L2Normalize(nn.Module):
    """L2Norm without its scale (folded into the head convs that read it): x / ||x||, eps as L2Norm."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True) + self.eps)


# ------------------------------------------------------------------------------------- the swaps
def _is_chain(m: nn.Module) -> bool:
    """An ``nn.Sequential`` that runs its children in order (its subclasses here do not override
    forward): the only place where "A's output feeds only B" is known without tracing."""
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _leaves(chain: nn.Sequential) -> List[Tuple[nn.Module, str]]:
    """(parent, child name) of the chain's non-Sequential children in execution order, nested chains
    flattened (LHRH's learned half is Sequential(NormReLUConv, Sequential(NormReLUConv, ...)))."""
    out: List[Tuple[nn.Module, str]] = []
    for name, child in chain.named_children():
        if _is_chain(child):
            out.extend(_leaves(child))
        else:
            out.append((chain, name))
    return out


def _fuse_chain(chain: nn.Sequential) -> None:
    """Swap the patterns of one chain in place: Conv [-> BN [-> ReLU]] -> ConvAct (BN folded, ReLU as
    post-op), BN -> ReLU (a chain's input: produced elsewhere, possibly shared) -> PreAct."""
    slots = _leaves(chain)
    mods = [getattr(p, n) for p, n in slots]
    i = 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if type(m) is nn.Conv2d:
            bn = nxt if nxt is not None and _is_bn(nxt) else None
            j = i + 1 + (bn is not None)
            relu = j < len(mods) and isinstance(mods[j], nn.ReLU)
            span = j - i + relu
            _swap(slots[i:i + span], ConvAct.from_conv(m, bn, relu))
            i += span
        elif _is_bn(m) and isinstance(nxt, nn.ReLU):
            _swap(slots[i:i + 2], PreAct(m))
            i += 2
        else:  # GroupNorm and its ReLU, pooling...: kept as they are
            i += 1


def _swap(slots: List[Tuple[nn.Module, str]], fused: nn.Module) -> None:
    """``fuse_modules``' convention: the fused module in the first slot, Identity in the others."""
    (parent, name), rest = slots[0], slots[1:]
    setattr(parent, name, fused)
    for p, n in rest:
        setattr(p, n, nn.Identity())


def _fuse_chains(module: nn.Module) -> None:
    for child in module.children():
        if _is_chain(child):
            _fuse_chain(child)
        else:
            _fuse_chains(child)


def _fold_l2norm_scales(head: nn.Module) -> None:
    """L2Norm(x) = normalize(x) * w per channel, and both head branches of that source start with a
    conv: w goes into the conv's input channels (depthwise: its output channel c reads input c)."""
    for i, l2 in enumerate(head.l2norms):
        if not isinstance(l2, L2Norm):
            continue
        firsts = [branch[0] for branch in (head.loc[i], head.conf[i])]
        if not all(type(c) is nn.Conv2d and (c.groups == 1 or c.groups == c.in_channels == c.out_channels)
                   for c in firsts):
            continue  # not a conv reading every channel once: keep the scale where it is
        w = l2.weight.detach()
        for conv in firsts:
            view = (1, -1, 1, 1) if conv.groups == 1 else (-1, 1, 1, 1)
            conv.weight.data = conv.weight.detach() * w.view(view).to(conv.weight.dtype)
        head.l2norms[i] = L2Normalize(l2.eps)


class FusedDSOD(DSOD):
    """Eval-only DSOD whose leaves are fused (see the module docstring); the forwards are DSOD's.

    Same call and output as ``DSOD``: ``forward(images) -> HeadOutputs``; ``anchors_cxcywh`` and
    ``config`` carried over. Folded weights are buffers, GroupNorm's parameters are frozen, and
``train(True)`` raises: it cannot be trained.
    """

    def __init__(self, fused: DSOD, channels_last: bool):
        super().__init__(fused.backbone, fused.neck, fused.head, fused.anchors_cxcywh,
                         getattr(fused, "config", None))
        self.channels_last = channels_last
        self.eval()

    def train(self, mode: bool = True) -> "FusedDSOD":
        if mode:
            raise RuntimeError("FusedDSOD is inference-only; train the original DSOD model")
        return super().train(False)

    def forward_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return super().forward_features(images)

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        with torch.no_grad():
            return super().forward(images)


def fuse_for_inference(model: DSOD, channels_last: Optional[bool] = None,
                       mkldnn_fusion: Optional[bool] = None) -> FusedDSOD:
    """An equivalent, faster, eval-only copy (see the module docstring for what is folded).

    Args:
        model: a ``DSOD`` (its current BN running statistics are used; the model itself is untouched).
        channels_last: NHWC activations; None -> True on CPU.
        mkldnn_fusion: run conv+bias+ReLU as one oneDNN call; None -> when available (CPU build with
            oneDNN). With False, plain ``conv2d`` + ReLU (e.g. to compare in ``dsod bench``).

    The intra-op thread count is left alone: callers set it (``dsod bench`` times 1..N threads; on a
    machine shared with other jobs one thread can be many times faster than two).
    """
    if not isinstance(model, DSOD) or isinstance(model, FusedDSOD):
        raise TypeError(f"fuse_for_inference expects an (unfused) DSOD model, got {type(model).__name__}")
    if model.config.backbone != "dsod":
        raise ValueError(f"fuse_for_inference supports the DSOD backbone only, not '{model.config.backbone}'")
    device = model.anchors_cxcywh.device
    if channels_last is None:
        channels_last = device.type == "cpu"
    with torch.no_grad():
        copied = copy.deepcopy(model).eval()
        _fold_l2norm_scales(copied.head)  # before the head's Conv -> BN folds: they then carry the scale
        _fuse_chains(copied)
    fused = FusedDSOD(copied, channels_last)
    use = _MKLDNN_POINTWISE if mkldnn_fusion is None else (bool(mkldnn_fusion) and _MKLDNN_POINTWISE)
    fused.requires_grad_(False)  # what is left of parameters (GroupNorm's) is frozen too
    for m in fused.modules():
        if isinstance(m, ConvAct):
            m.use_mkldnn = use
            if channels_last and m.weight.dim() == 4:
                m.weight = m.weight.contiguous(memory_format=torch.channels_last)
    return fused
