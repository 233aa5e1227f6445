"""The CPU-scale experiments of docs/RESULTS.md: the SSD VGG-16 backbone, Faster R-CNN on our
backbone, and the resumable ablation runner with its report (tiny budgets on real BCCD data)."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from dsod.config import get_config
from dsod.model import build_backbone, build_model


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_ssd_vgg_backbone_taps_and_heads_agree_with_the_default_boxes():
    model = build_model("cpu-ssd-vgg", num_classes=4).eval()
    x = torch.randn(2, 3, 224, 224)
    first, pool4, fc7 = model.backbone(x)
    assert first.shape[-1] == 28 and pool4.shape[-1] == 14 and fc7.shape[-1] == 14  # strides 8, 16, 16
    assert first.shape[1] == 64 and fc7.shape[1] == 128  # VGG-16 conv4_3 512 and fc7 1024, x 1/8
    out = model(x)
    assert out.cls_logits.shape == (2, model.anchors_cxcywh.shape[0], 4)
    assert "VGG-16" in model.config.describe()
    with pytest.raises(ValueError, match="valid: dsod, vgg"):
        build_model("cpu-dsod", backbone="resnet")


def test_build_backbone_is_the_detectors_backbone():
    cfg = get_config("cpu-dsod", num_classes=4)
    bb, det = build_backbone(cfg), build_model(cfg)
    assert [p.shape for p in bb.parameters()] == [p.shape for p in det.backbone.parameters()]


@pytest.mark.e2e
def test_faster_rcnn_on_our_backbone_learns(shared_data):
    """torchvision's Faster R-CNN around the cpu-dsod backbone: its training losses fall on 4 real
    BCCD images, and evaluation maps its boxes back to original pixels for the evaluator."""
    from dsod.data import DetectionDataset, build_dataloader, eval_transform, load_dataset
    from dsod.experiments.frcnn import build_faster_rcnn, evaluate_frcnn, torchvision_targets
    from dsod.metrics import Evaluator

    torch.manual_seed(0)
    spec = load_dataset(shared_data / "bccd")
    recs = spec.records("train")[:4]
    cfg = get_config("cpu-dsod", image_size=160)
    model = build_faster_rcnn(cfg, 4).train()
    ds = DetectionDataset(recs, eval_transform(160), train=True)
    images, targets = next(iter(build_dataloader(ds, 4)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = sum(model(list(images), torchvision_targets(targets, 160)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    ev = Evaluator(spec.info, recs)
    loader = build_dataloader(DetectionDataset(recs, eval_transform(160), train=False), 4)
    m = evaluate_frcnn(model, loader, ev, 160)
    _, dets = ev.detections()
    boxes = np.concatenate([d["boxes"] for d in dets])
    labels = np.concatenate([d["labels"] for d in dets])
    assert ev.num_updated == 4 and m["voc07_map50"] == m["voc07_map50"]  # all 4 images scored, not NaN
    assert set(labels.tolist()) <= {0, 1, 2}  # torchvision's 1-based foreground mapped back to ours
    assert len(boxes) and float(boxes[:, 2].max()) > 160  # original 640x480 pixels, not network input


def test_faster_rcnn_trains_with_the_dsod_runs_settings():
    """The ablation's fairness: the Faster R-CNN backbone gets the budget's BN decay (it ran at the
    preset's 0.999 while every DSOD variant ran at 0.99, ~7 mAP points at this scale)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from dsod.experiments.frcnn import build_faster_rcnn

    model = build_faster_rcnn(get_config("cpu-dsod", image_size=160, bn_decay=0.99), 4)
    decays = {getattr(m, "decay", None) for m in model.modules() if isinstance(m, _BatchNorm)}
    assert decays == {0.99}  # every BN of the backbone is Caffe's, at the budget's decay


@pytest.mark.e2e
def test_ablation_runs_are_resumable_shareable_and_reported(tmp_path, shared_data):
    from dsod.experiments.__main__ import main
    from dsod.experiments.ablation import Budget, run_one, write_report

    # 8 images for the BN re-estimate (the ablation's 256 prove nothing more here)
    b = Budget(data=str(shared_data / "bccd"), iterations=2, batch=4, warmup=1, val_every=2, precise_bn="8")
    rec = run_one("k8", 0, b, tmp_path)
    assert rec is not None
    saved = json.loads((tmp_path / "runs" / "k8-s0.json").read_text())
    assert saved == rec and saved["variant"] == "k8"
    # the record holds the run's final evaluation: the trainer's results.csv says the same
    final = list(csv.DictReader(open(tmp_path / "train" / "cpu-k8-s0" / "results.csv")))[-1]
    assert saved["voc07_map50"] == pytest.approx(float(final["voc07_map50"]), abs=1e-5)
    assert saved["budget"]["ema"] is True and saved["budget"]["precise_bn"] == "8"
    assert saved["params"] == 461800  # cpu-k8 with 3 classes + background (dsod info model=cpu-k8)
    assert [c["iteration"] for c in saved["curve"]] == [2]
    assert run_one("k8", 0, b, tmp_path) is None  # finished: skipped
    (tmp_path / "runs" / "k8-s1.lock").write_text(str(os.getpid()))  # claimed by a live process
    assert run_one("k8", 1, b, tmp_path) is None
    (tmp_path / "runs" / "k8-s1.lock").write_text("999999999")  # a dead claimant's lock is taken over
    assert run_one("k8", 1, b, tmp_path) is not None and not (tmp_path / "runs" / "k8-s1.lock").exists()
    md = write_report(tmp_path)
    assert "growth rate 8" in md and "| 0.21 G | 2 |" in md  # MACs and two seeds in the summary row
    rows = list(csv.DictReader(open(tmp_path / "ablation.csv")))
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    assert (tmp_path / "ablation.png").stat().st_size > 0 and (tmp_path / "curves.png").stat().st_size > 0
    assert main(["ablation", "variants=nope", f"out={tmp_path}"]) == 2
    assert main(["report", f"out={tmp_path / 'empty'}"]) == 2
