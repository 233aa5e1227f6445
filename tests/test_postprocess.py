import pytest
import torch

from dsod.geometry.box_coder import encode
from dsod.geometry.boxes import xyxy_to_cxcywh
from dsod.inference.postprocess.detection_output import PostProcessor
from dsod.inference.postprocess.reference import caffe_detection_output

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


@pytest.mark.parametrize("kernel", ["torchvision", "onnxruntime", "numba"])
@pytest.mark.parametrize("score_thresh,limit", [(0.01, 200), (0.25, 50), (0.9, 200)])
def test_selection_equals_caffe_detection_output(kernel, score_thresh, limit):
    """Both NMS kernels (dsod.inference.postprocess.nms) and the numpy top-k give exactly the candidates and survivors of the
    plain per-class loop, on dense overlapping candidates."""
    if kernel != "torchvision":
        pytest.importorskip(kernel)
    from dsod.inference.postprocess.nms import kernel as pick
    assert pick(requested=kernel) == kernel
    pp = PostProcessor(score_thresh=score_thresh, detections_per_img=limit, nms_kernel=kernel)
    for seed in range(3):
        boxes, scores = _dense_candidates(seed)
        want = caffe_detection_output(boxes.double().numpy(), scores.numpy(), score_thresh, 0.45, 400, limit)
        # the baseline the benchmark times: the same rule with torchvision's NMS
        assert caffe_detection_output(boxes.numpy(), scores.numpy(), score_thresh, 0.45, 400, limit,
                                      nms="torchvision") == want
        out = pp.single(boxes, scores, 1.0, 1.0)
        got = sorted(zip(out["scores"].tolist(), out["labels"].tolist()), reverse=True)
        assert [(round(s, 6), c) for s, c in got] == [(round(s, 6), c) for s, c, _ in want]
        assert torch.allclose(out["boxes"], boxes[[i for _, _, i in want]].clamp(0, 1))
        assert (out["scores"][:-1] >= out["scores"][1:]).all()  # sorted, as before
        if score_thresh == 0.01:
            assert 100 < len(want) == limit  # the case that matters: many survivors, the limit binding


@pytest.mark.parametrize("kernel", ["torchvision", "onnxruntime", "numba"])
@pytest.mark.parametrize("levels", [None, 64])
@pytest.mark.parametrize("score_thresh,limit,top_k", [(0.01, 200, 400), (0.25, 50, 400), (0.01, 150, 40)])
def test_selection_is_caffes_with_equal_scores_whatever_prefix_it_tries_first(kernel, levels, score_thresh, limit,
                                                                             top_k):
    """Exactly Caffe's detections, in Caffe's order, when scores tie by the hundreds (``levels``
    quantises them, as an int8 model's are): equal scores the lower anchor first, at the top-k cut and
    at the image's limit too. The prefix of the score order tried first is only a hint: from one pair
    (many rounds of lowering the threshold) to all of them, the result is the same; ``top_k`` 40
    makes Caffe's per-class cut bind inside the prefix."""
    import numpy as np

    from dsod.inference.postprocess.selection import PrefixSelector
    if kernel != "torchvision":
        pytest.importorskip(kernel)
    ties = 0
    for seed in range(3):
        boxes, scores = (t.numpy() for t in _dense_candidates(seed, anchors=1500, classes=4))
        if levels:
            scores = (np.round(scores * levels) / levels).astype(np.float32)
        want = caffe_detection_output(boxes.astype(np.float64), scores, score_thresh, 0.45, top_k, limit)
        for first in (1, 300, 10 ** 6):
            sel = PrefixSelector(score_thresh, 0.45, top_k, limit, kernel, first=first)
            anchors, classes, s = sel.select(boxes, scores)
            assert [(float(v), int(c), int(a)) for v, c, a in zip(s, classes, anchors)] == want
        ties += len(want) - len({s for s, _, _ in want})
    if levels and score_thresh == 0.01:
        assert ties > 100  # the case that matters: many equal scores among the survivors


def test_selection_learns_the_prefix_an_image_needs():
    """After an image, the selector tries about the prefix that image needed (a few hundred pairs of
    the 18,000 here, not all of them), and the next image's detections do not depend on it."""
    from dsod.inference.postprocess.selection import PrefixSelector
    sel = PrefixSelector()
    boxes, scores = (t.numpy() for t in _dense_candidates(0))
    first = sel.select(boxes, scores)
    assert 200 <= sel.hint < scores.size // 4
    again = sel.select(boxes, scores)
    assert all((a == b).all() for a, b in zip(first, again)) and len(first[0]) == 200


def test_nms_kernel_setting_is_checked(monkeypatch):
    from dsod.inference.postprocess.nms import kernel
    monkeypatch.setenv("DSOD_NMS", "torchvision")
    assert kernel() == "torchvision"
    monkeypatch.setenv("DSOD_NMS", "fast")
    with pytest.raises(ValueError, match="DSOD_NMS"):
        kernel()


@pytest.mark.parametrize("kernel", ["torchvision", "onnxruntime", "numba"])
def test_iou_equal_to_the_threshold_does_not_suppress(kernel):
    """Caffe keeps a box whose IoU with a kept one is at most the threshold (``overlap <=
    adaptive_threshold``): here exactly 0.45 in float32 (intersection 0.45 over a union of 1), so both
    boxes stay; a hair more overlap and the second goes."""
    if kernel != "torchvision":
        pytest.importorskip(kernel)
    from dsod.inference.postprocess.selection import PrefixSelector
    for x1, kept in ((0.45, 2), (0.46, 1)):
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, x1, 1.0]]).numpy()
        scores = torch.tensor([[0.9], [0.8]]).numpy()
        anchors, _, _ = PrefixSelector(nms_kernel=kernel).select(boxes, scores)
        assert len(anchors) == kept
