"""Shared test helpers (imported as ``from helpers import ...``: pytest puts tests/ on sys.path).

Float comparisons between results of *different* kernels or processes (eager vs fused, PyTorch vs
ONNX Runtime, one process vs DDP) use a tolerance relative to each tensor's norm: the summation
order of a reduction differs between CPUs (AVX2 vs AVX-512 kernels, oneDNN's blocking, the number of
processes), so single elements near zero can differ by far more than an element-wise ``rtol`` while
the tensor as a whole agrees to float precision. A real bug (a wrong BN statistic, a missing
layer) moves the whole tensor by much more than ``tol``.
"""
from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from dsod.config import PIXEL_MEAN_BGR
from dsod.runtime.distributed import free_port  # noqa: F401 (the tests' DDP runs use the project's)


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x


def rel_error(a, b) -> float:
    """||a - b|| / max(||a||, ||b||, tiny), in float64 (0 for two zero tensors)."""
    a, b = _as_tensor(a).detach().double().cpu(), _as_tensor(b).detach().double().cpu()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = max(a.norm().item(), b.norm().item(), 1e-30)
    return (a - b).norm().item() / scale


def norm_close(a, b, tol: float = 1e-4) -> bool:
    """``||a - b|| <= tol * max(||a||, ||b||)``: the cross-CPU safe form of ``allclose``."""
    return rel_error(a, b) <= tol


def assert_norm_close(a, b, tol: float = 1e-4, msg: str = "") -> None:
    err = rel_error(a, b)
    assert err <= tol, f"{msg + ': ' if msg else ''}relative error {err:.3g} > {tol:g}"




_SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "item")
_INDEX_OPS = ("index.Tensor", "index_put", "_index_put_impl_")


class _SyncRecorder(TorchDispatchMode):
    """Records every ATen call that needs a tensor's value on the host: ``.item()`` / ``int()`` /
    ``bool()`` (``_local_scalar_dense``, ``is_nonzero``), ``nonzero`` and ``masked_select``, and
    indexing with a boolean mask (which runs ``nonzero`` inside). On a GPU each is a
    host-device synchronisation; on the CPU this makes them visible to a test."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.name()).split("::")[-1]
        base = name.split(".")[0]
        if base in _SYNC_OPS:
            self.calls.append(name)
        elif name in _INDEX_OPS or base in _INDEX_OPS:
            flat = [x for a in args for x in (a if isinstance(a, (list, tuple)) else [a])]
            if any(torch.is_tensor(x) and x.dtype == torch.bool for x in flat):
                self.calls.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def assert_no_host_sync():
    """Fails if the block calls an operation that reads a tensor's value on the host."""
    rec = _SyncRecorder()
    with rec:
        yield rec
    assert rec.calls == [], f"host synchronisations: {rec.calls}"


def reference_match(iou: torch.Tensor, threshold: float = 0.5):
    """The matcher ``dsod.geometry.matching`` had before it became synchronisation-free, kept as the oracle:
    one host round trip per ground truth (``int(argmax)``, ``if work[g, a] <= 1e-6: break``).
    Caffe's MatchBBox, ties to the first pair in (ground truth, box) row-major order."""
    num_gt, num_anchors = iou.shape
    matched = torch.full((num_anchors,), -1, dtype=torch.long)
    if num_gt == 0:
        return matched, iou.new_zeros(num_anchors)
    max_iou, best_gt = iou.max(dim=0)
    work = iou.clone()
    for _ in range(num_gt):
        flat = int(work.argmax())
        g, a = divmod(flat, num_anchors)
        if work[g, a] <= 1e-6:
            break
        matched[a] = g
        work[g, :] = -1.0
        work[:, a] = -1.0
    extra = (matched < 0) & (max_iou >= threshold)
    matched[extra] = best_gt[extra]
    return matched, max_iou


def sigint_default() -> None:
    """``preexec_fn`` for a child that must be interruptible: a shell starts background jobs (``cmd &``,
    nohup, CI runners) with SIGINT ignored, the children inherit that, and Python then installs no
    KeyboardInterrupt handler. Tests that send SIGINT restore the default first."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def confident_dsod_nano(num_classes: int):
    """A dsod-nano whose scores and boxes vary with the image, as a trained one's do (built in a second):
    random BN statistics, head weights x20, and the second class favoured over background."""
    from dsod import build_model

    torch.manual_seed(0)
    model = build_model("dsod-nano", num_classes=num_classes + 1)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    for head in (model.head.conf, model.head.loc):
        for seq in head:
            seq[0].weight.data.mul_(20)
    for conf in model.head.conf:
        bn = conf[-1]
        bias = torch.zeros(bn.num_features // model.config.num_classes, model.config.num_classes)
        bias[:, 0], bias[:, 2] = 1.0, 2.0
        bn.bias.data.copy_(bias.flatten())
    return model.eval()


BCCD_CLASSES = ["RBC", "WBC", "Platelets"]


def read_bccd_independently(root, image_id, size):
    """A BCCD image as network input and its boxes, read with PIL and ElementTree only (no dsod.data)."""
    img = Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
    w, h = img.size
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]  # BGR
    x = torch.from_numpy(arr - np.array(PIXEL_MEAN_BGR, dtype=np.float32)).permute(2, 0, 1)
    boxes, labels = [], []
    for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").findall("object"):
        bb = obj.find("bndbox")
        x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x2 > x1 and y2 > y1:
            boxes.append([x1 / w, y1 / h, x2 / w, y2 / h])
            labels.append(BCCD_CLASSES.index(obj.find("name").text))
    return x, {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}


def shared_data_root() -> Path:
    """``../shared/data`` beside the checkout, or ``DSOD_SHARED_DATA`` (as conftest's ``shared_data``)."""
    return Path(os.environ.get("DSOD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def bccd_recall_at(model, postprocessor, stems, conf: float) -> float:
    """Mean per-image recall at IoU 0.5 (right class) of ``model``'s detections above ``conf`` on the
    BCCD images ``stems``, read by ``read_bccd_independently``."""
    import torch

    from dsod.geometry.boxes import box_iou

    root = shared_data_root() / "bccd"
    samples = [read_bccd_independently(root, s, model.config.image_size) for s in stems]
    model.eval()
    with torch.no_grad():
        out = model(torch.stack([x for x, _ in samples]))
    dets = postprocessor(out.bbox_regression, out.cls_logits, model.anchors_cxcywh)
    recalls = []
    for det, (_, tgt) in zip(dets, samples):
        keep = det["scores"] > conf
        iou = box_iou(tgt["boxes"], det["boxes"][keep])
        same = tgt["labels"][:, None] == det["labels"][keep][None, :]
        recalls.append(((iou >= 0.5) & same).any(dim=1).float().mean().item())
    return float(sum(recalls) / len(recalls))


def devkit_reference(gts, dets, cls, plus_one):
    """Literal port of VOCevaldet.m + VOCap.m (2007: 11-point; 2010+: area) for one class.
    gts: {image: (boxes, labels, difficult)}; dets: [(image, box, score, label)] in tie order."""
    e = 1.0 if plus_one else 0.0
    gt = {}
    npos = 0
    for img, (b, lab, dif) in gts.items():
        m = lab == cls
        gt[img] = (b[m].astype(np.float64), dif[m], np.zeros(int(m.sum()), bool))
        npos += int((~dif[m]).sum())
    d = [x for x in dets if x[3] == cls]
    order = sorted(range(len(d)), key=lambda i: -d[i][2])  # stable, like MATLAB sort
    tp = np.zeros(len(d))
    fp = np.zeros(len(d))
    for k, i in enumerate(order):
        img, bb, _, _ = d[i]
        boxes, dif, used = gt.get(img, (np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool)))
        ovmax, jmax = -np.inf, -1
        for j in range(len(boxes)):
            bbgt = boxes[j]
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + e
            ih = bi[3] - bi[1] + e
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + e) * (bb[3] - bb[1] + e) + (bbgt[2] - bbgt[0] + e) * (bbgt[3] - bbgt[1] + e) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= 0.5:
            if not dif[jmax]:
                if not used[jmax]:
                    tp[k] = 1
                    used[jmax] = True
                else:
                    fp[k] = 1
        else:
            fp[k] = 1
    if npos == 0:
        return float("nan"), float("nan")
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec_ = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)  # NaN for leading ignored detections; MATLAB's max skips NaN
    ap07 = 0.0
    for t in np.arange(11) / 10:
        p = prec[rec_ >= t]
        p = p[~np.isnan(p)]
        ap07 += (p.max() if len(p) else 0.0) / 11
    mrec = np.concatenate(([0], rec_, [1]))
    mpre = np.concatenate(([0], prec, [0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.fmax(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return ap07, float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))
