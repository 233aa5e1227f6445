import pytest
import torch

from dsod import build_model
from dsod.model.summary import count_macs, summarize


@pytest.fixture(scope="module")
def dsod300():
    return build_model("dsod300")


def test_dsod300_acceptance_numbers(dsod300):
    s = summarize(dsod300)
    assert s.trainable_params == 14_715_804
    assert s.bn_running_stats == 79_932
    assert round(s.macs / 1e9, 2) == 15.08
    assert s.num_anchors == 8744
    assert s.source_shapes == [(800, 38, 38), (512, 19, 19), (512, 10, 10), (256, 5, 5), (256, 3, 3), (256, 2, 2)]


def test_coco_head_and_smallest_counts():
    coco = build_model("dsod300", num_classes=81)
    assert sum(p.numel() for p in coco.parameters() if p.requires_grad) == 21_700_524
    smallest = build_model("dsod300-smallest")
    assert sum(p.numel() for p in smallest.parameters()) == 5_833_372
    assert round(count_macs(smallest, 300) / 1e9, 2) == 5.30


def test_no_conv_bias_and_caffe_init(dsod300):
    convs = [m for m in dsod300.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    # Caffe xavier: U(-sqrt(3/fan_in), +sqrt(3/fan_in)); the stem's first conv has fan_in 27.
    w = dsod300.backbone.stem.convs[0][0].weight
    bound = (3 / 27) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    head_w = dsod300.head.conf[0][0].weight
    assert abs(head_w.std().item() - 0.01) < 1e-3
    assert torch.all(dsod300.head.l2norms[3].weight == 20)
    head_bn = dsod300.head.loc[0][1]
    assert head_bn.eps == 1e-3 and dsod300.backbone.stem.convs[0][1].eps == 1e-5


@pytest.mark.parametrize("name,size,anchors", [("dsod300", 300, 8744), ("dsod512", 512, 24564)])
def test_output_shapes(name, size, anchors):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    assert out.bbox_regression.shape == (2, anchors, 4)
    assert out.cls_logits.shape == (2, anchors, 21)
    assert model.anchors_cxcywh.shape == (anchors, 4)


def test_dsod512_has_seven_sources():
    s = summarize(build_model("dsod512"))
    assert [hw[1] for hw in s.source_shapes] == [64, 32, 16, 8, 4, 2, 1]


def test_tiny_presets_are_small():
    for name in ("dsod-tiny", "dsod-nano"):
        assert sum(p.numel() for p in build_model(name).parameters()) < 1_000_000


def test_ablation_knobs_change_the_network():
    base = summarize(build_model("ablation-1-baseline"))
    trans = summarize(build_model("ablation-2-trans-wo-pool"))
    theta = summarize(build_model("ablation-3-theta1"))
    plain = summarize(build_model("dsod300-plain"))
    # Paper Table 3 (recalled): 4.1M -> 4.2M -> 5.5M; plain DS/64-192-48-1 has the 1568-ch backbone.
    assert round(base.trainable_params / 1e6, 1) == 4.1
    assert trans.trainable_params > base.trainable_params
    assert theta.trainable_params > trans.trainable_params
    assert plain.source_shapes[1] == (1568, 19, 19)
    assert build_model("ablation-7-stem").backbone.stem.use_stem
    assert not build_model("ablation-6-big-growth").backbone.stem.use_stem
    # A pooling third transition halves the later maps (stride 32 for scale 2).
    pooled = build_model("dsod300", transition_pooling=(True, True, True, False))
    assert summarize(pooled).source_shapes[1][1:] == (10, 10)


def test_every_parameter_gets_a_gradient():
    model = build_model("dsod-tiny").train()
    out = model(torch.randn(2, 3, 300, 300))
    (out.bbox_regression.sum() + out.cls_logits.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_groupnorm_option():
    model = build_model("dsod-nano", norm="gn")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    out = model(torch.randn(1, 3, 160, 160))
    assert torch.isfinite(out.cls_logits).all()


def test_caffe_batchnorm_running_average_is_bias_corrected():
    from dsod.model.norms import CaffeBatchNorm2d

    bn = CaffeBatchNorm2d(3, decay=0.999)
    x = torch.randn(8, 3, 4, 4) * 5 + 7
    bn(x)  # first step: running stats equal the batch stats (Caffe S_1 / F_1)
    assert torch.allclose(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    y = torch.randn(8, 3, 4, 4) - 3
    bn(y)  # second step: (0.999 * m1 + m2) / 1.999
    expected = (0.999 * x.mean(dim=(0, 2, 3)) + y.mean(dim=(0, 2, 3))) / 1.999
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)


def test_invalid_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("dsod301")
    with pytest.raises(ValueError, match="must pool"):
        build_model("dsod300", transition_pooling=(True, False, False, False))
    with pytest.raises(ValueError, match="prediction"):
        build_model("dsod300", prediction="fancy")
