import pytest
import torch

from dsod.box_coder import encode
from dsod.boxes import xyxy_to_cxcywh
from dsod.postprocess import PostProcessor

ANCHORS = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]])


def _logits(probs):
    return torch.log(torch.tensor(probs)).unsqueeze(0)


def test_threshold_nms_and_labels():
    probs = [[0.1, 0.9, 0.0 + 1e-9], [0.2, 0.8, 1e-9], [0.3, 1e-9, 0.7], [0.995, 0.004, 0.001]]
    logits = _logits(probs)
    out = PostProcessor()(torch.zeros(1, 4, 4), logits, ANCHORS)[0]
    # anchor 1 overlaps anchor 0 (IoU ~0.9) in the same class and is suppressed; anchor 3's scores
    # are below 0.01.
    assert out["labels"].tolist() == [0, 1]
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.7]), atol=1e-5)
    assert torch.allclose(out["boxes"][0], torch.tensor([0.2, 0.2, 0.4, 0.4]), atol=1e-5)


def test_same_box_in_two_classes_is_kept_twice():
    probs = [[0.1, 0.5, 0.4], [0.98, 0.01, 0.01], [0.98, 0.01, 0.01], [0.98, 0.01, 0.01]]
    out = PostProcessor()(torch.zeros(1, 4, 4), _logits(probs), ANCHORS)[0]
    assert sorted(out["labels"].tolist()) == [0, 1]


def test_topk_per_class_and_keep_limit():
    probs = [[0.1, 0.9, 1e-9], [0.2, 0.8, 1e-9], [0.3, 0.7, 1e-9], [0.4, 0.6, 1e-9]]
    pp = PostProcessor(nms_thresh=1.0, topk_candidates=2)
    out = pp(torch.zeros(1, 4, 4), _logits(probs), ANCHORS)[0]
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.8]), atol=1e-6)
    pp = PostProcessor(nms_thresh=1.0, detections_per_img=3)
    assert len(pp(torch.zeros(1, 4, 4), _logits(probs), ANCHORS)[0]["scores"]) == 3


def test_decoding_and_scaling_to_original_pixels():
    gt = torch.tensor([[0.25, 0.2, 0.45, 0.5]])
    offsets = torch.zeros(1, 4, 4)
    offsets[0, 0] = encode(xyxy_to_cxcywh(gt), ANCHORS[:1])[0]
    probs = [[0.0 + 1e-9, 1.0, 1e-9]] + [[1.0, 1e-9, 1e-9]] * 3
    out = PostProcessor()(offsets, _logits(probs), ANCHORS, image_sizes=[(480, 640)])[0]
    assert torch.allclose(out["boxes"][0], torch.tensor([0.25 * 640, 0.2 * 480, 0.45 * 640, 0.5 * 480]), atol=1e-3)


def test_no_detections():
    probs = [[1.0, 1e-9, 1e-9]] * 4
    out = PostProcessor()(torch.zeros(2, 4, 4), _logits(probs).expand(2, -1, -1), ANCHORS)
    assert len(out) == 2 and out[0]["boxes"].shape == (0, 4) and out[1]["labels"].numel() == 0


def _dense_candidates(seed, anchors=3000, classes=6):
    """Decoded outputs like a trained detector's at score 0.01: boxes in tight clusters around a few
    objects (heavy overlap, long suppression chains) and scores above the threshold almost everywhere."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(12, 2, generator=g) * 0.8 + 0.1
    pick = torch.randint(0, 12, (anchors,), generator=g)
    cxcy = centres[pick] + torch.randn(anchors, 2, generator=g) * 0.02
    wh = (torch.rand(anchors, 2, generator=g) * 0.2 + 0.05)
    boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], 1)
    scores = torch.softmax(torch.randn(anchors, classes + 1, generator=g) * 2, 1)[:, 1:]
    return boxes, scores


def _reference(boxes, scores, score_thresh, nms_thresh, topk, limit):
    """Caffe DetectionOutput written plainly: per class threshold, sort, top-k, NMS; the best `limit`."""
    from torchvision.ops import nms
    found = []
    for c in range(scores.shape[1]):
        s = scores[:, c]
        idx = torch.nonzero(s > score_thresh).flatten()
        idx = idx[s[idx].argsort(descending=True)][:topk]
        for j in nms(boxes[idx], s[idx], nms_thresh).tolist():
            found.append((float(s[idx[j]]), c, int(idx[j])))
    return sorted(found, reverse=True)[:limit]


@pytest.mark.parametrize("kernel", ["torchvision", "onnxruntime"])
@pytest.mark.parametrize("score_thresh,limit", [(0.01, 200), (0.25, 50), (0.9, 200)])
def test_selection_equals_caffe_detection_output(kernel, score_thresh, limit):
    """Both NMS kernels (dsod.nms) and the numpy top-k give exactly the candidates and survivors of the
    plain per-class loop, on dense overlapping candidates."""
    if kernel == "onnxruntime":
        pytest.importorskip("onnxruntime")
    from dsod.nms import kernel as pick
    assert pick(requested=kernel) == kernel
    pp = PostProcessor(score_thresh=score_thresh, detections_per_img=limit, nms_kernel=kernel)
    for seed in range(3):
        boxes, scores = _dense_candidates(seed)
        want = _reference(boxes, scores, score_thresh, 0.45, 400, limit)
        out = pp.single(boxes, scores, 1.0, 1.0)
        got = sorted(zip(out["scores"].tolist(), out["labels"].tolist()), reverse=True)
        assert [(round(s, 6), c) for s, c in got] == [(round(s, 6), c) for s, c, _ in want]
        assert torch.allclose(out["boxes"], boxes[[i for _, _, i in want]].clamp(0, 1))
        assert (out["scores"][:-1] >= out["scores"][1:]).all()  # sorted, as before
        if score_thresh == 0.01:
            assert 100 < len(want) == limit  # the case that matters: many survivors, the limit binding


@pytest.mark.parametrize("levels", [None, 64])
def test_topk_per_class_is_caffes_stable_selection(levels):
    """Each class's k best as Caffe's std::stable_sort takes them: equal scores (bf16/int8 outputs tie
    by the hundreds; ``levels`` quantises the scores so) in anchor order, at the cut too."""
    import numpy as np

    from dsod.postprocess import topk_per_class
    _, scores = _dense_candidates(0)
    if levels:
        scores = torch.round(scores * levels) / levels
    for k in (1, 400, 2999, 3000):
        top, idx = topk_per_class(scores, k)
        for c in range(scores.shape[1]):
            want = np.argsort(-scores[:, c].numpy(), kind="stable")[:k]
            assert np.array_equal(idx[c].numpy(), want) and torch.equal(top[c], scores[want, c])


def test_nms_kernel_setting_is_checked(monkeypatch):
    from dsod.nms import kernel
    monkeypatch.setenv("DSOD_NMS", "torchvision")
    assert kernel() == "torchvision"
    monkeypatch.setenv("DSOD_NMS", "fast")
    with pytest.raises(ValueError, match="DSOD_NMS"):
        kernel()
