"""CUDA parity checks: the model with AMP and channels_last on the GPU against fp32
on the CPU, the matcher and the loss on the GPU (identical targets, no host synchronisation), and the
post-processing. Every test skips without CUDA: the suite never needs a GPU; `benchmarks/gpu_check.py`
runs these with `pytest -m cuda` on a machine that has one."""
import pytest
import torch
from helpers import assert_norm_close, rel_error

from dsod import build_model
from dsod.inference.postprocess.detection_output import PostProcessor
from dsod.model.loss import MultiBoxLoss

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _targets(gen, n, device="cpu"):
    """BCCD-like: 5-28 boxes per image (one image without objects), 3 classes."""
    out = []
    for i in range(n):
        g = 0 if i == 1 else int(torch.randint(5, 29, (1,), generator=gen))
        xy = torch.rand(g, 2, generator=gen) * 0.75
        wh = torch.rand(g, 2, generator=gen) * 0.2 + 0.05
        out.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                    "labels": torch.randint(0, 3, (g,), generator=gen).to(device)})
    return out


def _one_step(channels_last: bool, amp: bool):
    """DSOD300 (128 px, train mode: batch statistics) on the CPU in fp32 and on the GPU, same
    weights and input; forward, MultiBoxLoss, and the backward of a fixed random projection of the
    outputs (no hard-negative selection, a discrete choice that float noise may flip)."""
    torch.manual_seed(0)
    cpu = build_model("dsod300", num_classes=4, image_size=128).train()
    init = {k: v.clone() for k, v in cpu.state_dict().items()}
    gpu = build_model("dsod300", num_classes=4, image_size=128)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().train()
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 50
    xg = x.cuda()
    if channels_last:
        gpu = gpu.to(memory_format=torch.channels_last)
        xg = xg.contiguous(memory_format=torch.channels_last)
    ref = cpu(x)
    with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        out = gpu(xg)
    assert (out.cls_logits.dtype == torch.float16) == amp
    gen = torch.Generator().manual_seed(7)
    r_box = torch.randn(ref.bbox_regression.shape, generator=gen)
    r_cls = torch.randn(ref.cls_logits.shape, generator=gen)
    ((ref.bbox_regression * r_box).sum() + (ref.cls_logits * r_cls).sum()).backward()
    r_box, r_cls = r_box.cuda(), r_cls.cuda()
    ((out.bbox_regression.float() * r_box).sum() + (out.cls_logits.float() * r_cls).sum()).backward()
    targets = _targets(torch.Generator().manual_seed(2), 4)
    crit = MultiBoxLoss()
    loss_cpu = crit(ref.bbox_regression.detach(), ref.cls_logits.detach(), targets,
                    cpu.anchors_cxcywh)["loss"]
    loss_gpu = crit(out.bbox_regression.detach().float(), out.cls_logits.detach().float(),
                    [{k: v.cuda() for k, v in t.items()} for t in targets], gpu.anchors_cxcywh)["loss"]
    names = [n for n, p in cpu.named_parameters() if p.grad is not None]
    g_cpu = torch.cat([cpu.get_parameter(n).grad.flatten() for n in names]).double()
    g_gpu = torch.cat([gpu.get_parameter(n).grad.float().flatten().cpu() for n in names]).double()
    r = {"boxes": rel_error(out.bbox_regression, ref.bbox_regression),
         "logits": rel_error(out.cls_logits, ref.cls_logits),
         "loss": abs(loss_gpu.item() - loss_cpu.item()) / abs(loss_cpu.item()),
         "grad_finite": bool(torch.isfinite(g_gpu).all()), "grad_rel": rel_error(g_gpu, g_cpu),
         "grad_cos": torch.nn.functional.cosine_similarity(g_gpu, g_cpu, dim=0).item()}
    for key in ("running_mean", "running_var"):  # this step's update of the BN running averages
        keys = [k for k in init if k.endswith(key)]
        a = torch.cat([(cpu.state_dict()[k] - init[k]).flatten() for k in keys])
        b = torch.cat([(gpu.state_dict()[k].float().cpu() - init[k]).flatten() for k in keys])
        r[key] = rel_error(b, a)
    return r


@pytest.mark.parametrize("channels_last", [True, False])
def test_cuda_fp32_matches_cpu(channels_last):
    # Tolerances from the CPU analogue (fp32 channels_last vs contiguous kernels, AMD EPYC): outputs
    # 3e-5, gradients 1.4e-2 (train-mode BN 70 layers deep at initialisation amplifies the noise of
    # the backward ~500x; cosine 0.9999), BN updates 6e-6.
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # true fp32
    try:
        r = _one_step(channels_last, amp=False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    assert r["boxes"] < 1e-3 and r["logits"] < 1e-3 and r["loss"] < 1e-4, r
    assert r["grad_finite"] and r["grad_rel"] < 0.1 and r["grad_cos"] > 0.995, r
    assert r["running_mean"] < 1e-3 and r["running_var"] < 1e-3, r


def test_cuda_amp_channels_last_matches_cpu_fp32():
    # fp16 autocast + channels_last, as `dsod train` runs on CUDA. The CPU's own fp16 autocast gave:
    # outputs 1.3e-2, gradient cosine 0.91, BN updates 2.4e-3 (mean) / 1.2e-4 (var). A broken
    # layout or cast gives errors of order 1 and a cosine near 0.
    r = _one_step(channels_last=True, amp=True)
    assert r["boxes"] < 5e-2 and r["logits"] < 5e-2 and r["loss"] < 2e-2, r
    assert r["grad_finite"] and r["grad_cos"] > 0.8, r
    assert r["running_mean"] < 2e-2 and r["running_var"] < 2e-2, r


def test_cuda_matcher_equals_cpu_without_synchronisation():
    from dsod.config import get_config
    from dsod.geometry.anchors import default_boxes
    from dsod.model.factory import feature_sizes

    cfg = get_config("dsod300")
    anchors = default_boxes(cfg.anchors, cfg.image_size, feature_sizes(cfg))
    targets = _targets(torch.Generator().manual_seed(3), 16)
    crit = MultiBoxLoss()
    want = crit.build_targets(targets, anchors)
    targets_gpu = [{k: v.cuda() for k, v in t.items()} for t in targets]
    anchors_gpu = anchors.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        got = crit.build_targets(targets_gpu, anchors_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got[0].cpu(), want[0])  # classes: the same matches, to the box
    assert torch.equal(got[2].cpu(), want[2])  # negative candidates
    assert_norm_close(got[1].cpu(), want[1], 1e-6, "loc targets")  # CUDA's log/div may differ by an ulp


def test_cuda_loss_without_synchronisation():
    anchors = torch.rand(3000, 4) * 0.5 + 0.2
    targets = [{k: v.cuda() for k, v in t.items()} for t in _targets(torch.Generator().manual_seed(4), 8)]
    loc = torch.randn(8, 3000, 4, device="cuda", requires_grad=True)
    logits = torch.randn(8, 3000, 4, device="cuda", requires_grad=True)
    anchors = anchors.cuda()
    crit = MultiBoxLoss()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = crit(loc, logits, targets, anchors)
        out["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    targets_cpu = [{k: v.cpu() for k, v in t.items()} for t in targets]
    ref = crit(loc.detach().cpu(), logits.detach().cpu(), targets_cpu, anchors.cpu())
    assert abs(out["loss"].item() - ref["loss"].item()) <= 1e-5 * ref["loss"].item()
    assert int(out["num_pos"]) == int(ref["num_pos"]) > 0


def test_cuda_postprocess_matches_cpu():
    gen = torch.Generator().manual_seed(5)
    anchors = torch.cat([torch.rand(2000, 2, generator=gen) * 0.8 + 0.1,
                         torch.rand(2000, 2, generator=gen) * 0.2 + 0.05], 1)
    offsets = torch.randn(2, 2000, 4, generator=gen) * 0.5
    logits = torch.randn(2, 2000, 4, generator=gen)
    logits[..., 0] += 4.0  # background almost everywhere ...
    logits[:, :40, 1:] += 8 * torch.rand(2, 40, 3, generator=gen)  # ... but for a few clear detections
    post = PostProcessor()
    want = post(offsets, logits, anchors, image_sizes=[(480, 640), (300, 300)])
    got = post(offsets.cuda(), logits.cuda(), anchors.cuda(), image_sizes=[(480, 640), (300, 300)])
    for g, w in zip(got, want):
        n = int((w["scores"] > 0.3).sum())  # the clear ones: no near-ties in score order or at a cut
        assert n > 5
        assert torch.equal(g["labels"][:n].cpu(), w["labels"][:n])
        assert_norm_close(g["scores"][:n].cpu(), w["scores"][:n], 1e-5, "scores")
        assert_norm_close(g["boxes"][:n].cpu(), w["boxes"][:n], 1e-5, "boxes")
