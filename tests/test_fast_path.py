"""Inference fast path (BN folding into the leaves of a copy), memory-efficient dense blocks, and the
benchmark's report structure. Equality checks only: timings live in ``dsod bench``, never in tests."""
import json

import pytest
import torch
import torchvision
from helpers import assert_norm_close

from dsod import build_model
from dsod.inference.postprocess.detection_output import PostProcessor
from dsod.model.fast import FusedDSOD, fuse_for_inference


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these are equality checks, and on a 2-core machine shared with other jobs
    two OpenMP threads can make small ops orders of magnitude slower (barriers wait for a descheduled
    thread). Restored afterwards."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# A small non-depthwise DSOD (same code paths as dsod300: 3x3 dense layers, dense prediction, 2x2 quirk).
SMALL = dict(stem_channels=8, growth_rate=8, bottleneck_width=16, block_config=(2, 3, 2, 2),
             prediction_widths=(16, 16, 8, 8, 8))


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affines, so that folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
        if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)):
            m.weight.data.copy_(torch.rand(m.num_features if hasattr(m, "num_features") else m.num_channels,
                                           generator=g) * 3 - 1.5)
            m.bias.data.uniform_(-0.5, 0.5, generator=g)
    for l2 in model.head.l2norms:
        l2.weight.data.uniform_(5, 30, generator=g)
    return model.eval()


@pytest.mark.parametrize("name,overrides", [
    ("dsod300", SMALL),
    ("dsod300", dict(SMALL, prediction="plain")),
    ("dsod-tiny", {}),  # depthwise dense layers, neck and heads
    ("dsod-nano", {"norm": "gn"}),  # GroupNorm: nothing to fold, must still match
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_model_matches_eager(name, overrides, channels_last):
    torch.manual_seed(0)
    size = 160 if name == "dsod-nano" else 128
    model = _randomise_norms(build_model(name, image_size=size, **overrides))
    fused = fuse_for_inference(model, channels_last=channels_last)
    x = torch.randn(2, 3, size, size) * 50
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert type(out).__name__ == "HeadOutputs"
    assert out.bbox_regression.shape == ref.bbox_regression.shape
    assert out.cls_logits.shape == ref.cls_logits.shape
    # folded BN reorders the float arithmetic, differently on each CPU's kernels: a norm-relative
    # tolerance (measured on an AMD EPYC, AVX2: at most 1e-5, dsod-nano with GroupNorm, channels_last)
    assert_norm_close(out.bbox_regression, ref.bbox_regression, 1e-4, "boxes")
    assert_norm_close(out.cls_logits, ref.cls_logits, 1e-4, "logits")
    assert torch.equal(fused.anchors_cxcywh, model.anchors_cxcywh)


def test_fused_model_is_eval_only_and_leaves_the_original_alone():
    model = _randomise_norms(build_model("dsod-nano"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    assert isinstance(fused, FusedDSOD) and not fused.training
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # fewer normalisation layers: every BN that can be folded has been
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())


def test_fused_model_leaves_the_thread_count_alone():
    """A library model must not set the process-wide thread count, not even during its forward: the
    caller owns it (the fixture's one thread would hide a forward that sets one, so two here)."""
    fused = fuse_for_inference(build_model("dsod-nano").eval())
    seen = []
    fused.head.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    with torch.no_grad():
        fused(torch.zeros(1, 3, 160, 160))
    assert seen == [2] and torch.get_num_threads() == 2


def test_fused_detections_match_eager():
    model = _randomise_norms(build_model("dsod300", image_size=128, **SMALL))
    fused = fuse_for_inference(model)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 128, 128) * 50
    post = PostProcessor()
    with torch.no_grad():
        a = post(*model(x), model.anchors_cxcywh)[0]
        b = post(*fused(x), fused.anchors_cxcywh)[0]
    n = min(50, len(a["scores"]), len(b["scores"]))
    assert n > 0
    # the same detections in the same order: the top scores are further apart (measured: >= 7.7e-5)
    # than folding moves a score (measured: <= 7.7e-7), so the ranking is not a coin toss
    assert float((a["scores"][:n - 1] - a["scores"][1:n]).abs().min()) > 1e-5
    torch.testing.assert_close(b["scores"][:n], a["scores"][:n], rtol=0, atol=1e-5)
    assert torch.equal(b["labels"][:n], a["labels"][:n])
    torch.testing.assert_close(b["boxes"][:n], a["boxes"][:n], rtol=0, atol=1e-5)  # measured: 6e-8


@pytest.mark.parametrize("name,overrides", [("dsod300", SMALL), ("dsod-nano", {})])
def test_memory_efficient_dense_blocks_same_numbers(name, overrides):
    """Same parameters, same forward, same gradients (float64: no reordering noise), same BN running
    statistics and step counts (recomputation must not update them a second time)."""
    size = 64
    torch.manual_seed(0)
    a = build_model(name, image_size=size, memory_efficient=False, **overrides).double().train()
    b = build_model(name, image_size=size, memory_efficient=True, **overrides).double().train()
    b.load_state_dict(a.state_dict())
    assert b.config.memory_efficient and b.backbone.blocks[0].memory_efficient
    assert b.backbone.stem.memory_efficient and b.head.memory_efficient
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    for step in range(2):
        x = torch.randn(2, 3, size, size, dtype=torch.float64) * 50
        outs = []
        for m in (a, b):
            m.zero_grad()
            out = m(x)
            (out.bbox_regression.square().sum() + out.cls_logits.square().sum()).backward()
            outs.append(out)
        assert torch.equal(outs[0].cls_logits, outs[1].cls_logits)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-7, atol=1e-9, msg=n)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert int(b.backbone.blocks[0].layers[0].layers[0][0].num_batches_tracked) == 2


def test_memory_efficient_is_on_for_the_full_size_presets():
    assert build_model("dsod300").config.memory_efficient
    assert build_model("dsod300").backbone.blocks[0].memory_efficient
    assert not build_model("dsod-nano").config.memory_efficient


def test_bench_report_structure(tmp_path):
    from dsod.bench import bench_main

    out = tmp_path / "bench.json"
    assert bench_main({"model": "dsod-nano", "compare": "ssdlite320", "backends": "eager,fused", "runs": 1,
                       "threads": "1", "batch": 2, "train": "none", "threads_sweep": False, "json": str(out)}) == 0
    report = json.loads(out.read_text())
    ours, peer = report["results"]["dsod-nano"], report["results"]["ssdlite320"]["eager"]
    gflops = report["conv_ceiling"]["gflops"]
    per_shape = report["conv_ceiling"]["per_shape_gflops"]  # the ceiling: the best shape's rate
    assert gflops == pytest.approx(per_shape[report["conv_ceiling"]["best"]], abs=0.05) == max(per_shape.values())
    assert peer["params"] == sum(p.numel() for p in torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None).parameters())
    for be in ("eager", "fused"):
        e = ours[be]  # timings are whatever this machine gives; the figures derived from them are knowable
        assert e["params"] == 274_624 and e["macs"] == ours["eager"]["macs"]
        assert set(e["ratio_vs"]) == {"ssdlite320"}
        assert e["ratio_vs"]["ssdlite320"] == pytest.approx(e["latency_ms_b1"] / peer["latency_ms_b1"])
        assert e["floor_ms"] == pytest.approx(2 * e["macs"] / (gflops * 1e9) * 1e3)
        assert e["floor_ratio"] == pytest.approx(e["latency_ms_b1"] / e["floor_ms"])
        assert e["gflops_achieved"] * e["latency_ms_b1"] == pytest.approx(2 * e["macs"] / 1e6)
        assert e["throughput_img_s"] * e["latency_ms_b2"] == pytest.approx(2 * 1e3)


def test_bench_times_each_exported_backends_selection_on_its_own_outputs(tmp_path):
    """The ONNX Runtime backend's post-processing figure is the selection run on that backend's own
    outputs (int8 scores tie and spread otherwise); the PyTorch backends share the eager model's."""
    pytest.importorskip("onnxruntime")
    from dsod.bench import bench_main

    out = tmp_path / "bench.json"
    assert bench_main({"model": "dsod-nano", "compare": "none", "backends": "eager,fused,onnxruntime", "runs": 1,
                       "threads": "1", "batch": 2, "train": "none", "threads_sweep": False, "json": str(out)}) == 0
    ours = json.loads(out.read_text())["results"]["dsod-nano"]
    ort, eager, fused = ours["onnxruntime"], ours["eager"], ours["fused"]
    assert "this backend's outputs" in ort["postprocess"] and "this backend" not in eager["postprocess"]
    assert eager["postprocess_ms_b1"] == fused["postprocess_ms_b1"]  # one timing, shared
    assert {"postprocess_ms_b1", "postprocess_ms_b1_conf025"} <= set(ort)
