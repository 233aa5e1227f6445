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
