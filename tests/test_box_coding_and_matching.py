import math

import torch

from dsod.box_coder import decode, encode
from dsod.boxes import box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh
from dsod.matching import match


def test_encode_hand_values_and_round_trip():
    anchor = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    gt = torch.tensor([[0.52, 0.46, 0.3, 0.2]])
    t = encode(gt, anchor)
    expected = torch.tensor([[0.02 / (0.1 * 0.2), -0.04 / (0.1 * 0.4), math.log(1.5) / 0.2, math.log(0.5) / 0.2]])
    assert torch.allclose(t, expected, atol=1e-5)
    g = torch.rand(1000, 4) * 0.5 + 0.05
    a = torch.rand(1000, 4) * 0.5 + 0.05
    assert torch.allclose(decode(encode(g, a), a), g, atol=1e-5)


def test_box_format_round_trip():
    b = torch.tensor([[0.1, 0.2, 0.5, 0.9]])
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)


def _anchors_xyxy():
    return torch.tensor([
        [0.0, 0.0, 0.5, 0.5],
        [0.5, 0.0, 1.0, 0.5],
        [0.0, 0.5, 0.5, 1.0],
        [0.5, 0.5, 1.0, 1.0],
        [0.1, 0.1, 0.55, 0.55],
    ])


def test_no_ground_truth():
    matched, max_iou = match(torch.zeros(0, 5))
    assert torch.all(matched == -1) and torch.all(max_iou == 0)


def test_low_overlap_gt_still_gets_its_best_box():
    gt = torch.tensor([[0.0, 0.0, 0.2, 0.2]])  # IoU 0.16 with anchor 0, 0.12 with anchor 4
    matched, _ = match(box_iou(gt, _anchors_xyxy()))
    assert matched.tolist() == [0, -1, -1, -1, -1]


def test_two_ground_truths_wanting_the_same_box():
    anchors = _anchors_xyxy()
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5],      # IoU 1 with anchor 0
                       [0.05, 0.05, 0.5, 0.5]])   # best is anchor 0 too (0.81), next anchor 4
    iou = box_iou(gt, anchors)
    assert iou[1].argmax() == 0
    matched, _ = match(iou)
    assert matched[0] == 0  # the higher IoU keeps the box
    assert matched[4] == 1  # the other takes its best remaining box
    # per-prediction step: anchor 4 also overlaps gt 0 above 0.5 but is already taken bipartitely
    assert (matched >= 0).sum() == 2


def test_threshold_step_adds_every_box_above_half():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.45, 0.5], [0.0, 0.0, 0.2, 0.5]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    iou = box_iou(gt, anchors)  # 1.0, 0.9, 0.4
    matched, max_iou = match(iou)
    assert matched.tolist() == [0, 0, -1]
    assert torch.allclose(max_iou, torch.tensor([1.0, 0.9, 0.4]))
