import math

import torch

from dsod.boxes import cxcywh_to_xyxy
from dsod.loss import MultiBoxLoss

ANCHORS = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])


def _ce(logits, target):
    return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))


def _smooth_l1(d):
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def test_loss_equals_hand_computation():
    loc = torch.zeros(1, 4, 4)
    loc[0, 0] = torch.tensor([0.5, -2.0, 0.1, 0.0])
    logits = torch.tensor([[[0.2, 0.1, 1.5], [2.0, 0.3, -1.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.5]]])
    target = [{"boxes": cxcywh_to_xyxy(ANCHORS[:1]), "labels": torch.tensor([1])}]  # net class 2
    out = MultiBoxLoss()(loc, logits, target, ANCHORS)
    exp_loc = sum(_smooth_l1(d) for d in [0.5, -2.0, 0.1, 0.0])  # target offsets are 0
    L = logits[0].tolist()
    exp_conf = _ce(L[0], 2) + _ce(L[1], 0) + _ce(L[2], 0) + _ce(L[3], 0)  # 3 negatives (3:1)
    assert out["num_pos"] == 1
    assert math.isclose(out["loss_loc"].item(), exp_loc, rel_tol=1e-5)
    assert math.isclose(out["loss_conf"].item(), exp_conf, rel_tol=1e-5)
    assert math.isclose(out["loss"].item(), exp_loc + exp_conf, rel_tol=1e-5)


def test_hard_negative_mining_keeps_the_three_hardest():
    anchors = torch.tensor([[0.1 + 0.15 * i, 0.5, 0.1, 0.1] for i in range(6)] + [[0.5, 0.1, 0.1, 0.1]])
    logits = torch.zeros(1, 7, 2)
    bg_logit = [0.0, -3.0, 2.0, -1.0, -2.0, 1.0]  # lower background logit = harder negative
    logits[0, :6, 0] = torch.tensor(bg_logit)
    target = [{"boxes": cxcywh_to_xyxy(anchors[6:]), "labels": torch.tensor([0])}]
    out = MultiBoxLoss()(torch.zeros(1, 7, 4), logits, target, anchors)
    negs = sorted((_ce([b, 0.0], 0) for b in bg_logit), reverse=True)[:3]
    expected = _ce([0.0, 0.0], 1) + sum(negs)
    assert math.isclose(out["loss_conf"].item(), expected, rel_tol=1e-5)


def test_normalised_by_positives_across_the_batch():
    loc = torch.zeros(2, 4, 4)
    loc[:, 0, 0] = 0.8
    logits = torch.zeros(2, 4, 3)
    target = [{"boxes": cxcywh_to_xyxy(ANCHORS[:1]), "labels": torch.tensor([0])}] * 2
    out = MultiBoxLoss()(loc, logits, target, ANCHORS)
    assert out["num_pos"] == 2
    assert math.isclose(out["loss_loc"].item(), 0.5 * 0.8 ** 2, rel_tol=1e-5)


def test_images_without_objects():
    loc = torch.randn(2, 4, 4, requires_grad=True)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    out = MultiBoxLoss()(loc, logits, [empty, empty], ANCHORS)
    assert out["loss"].item() == 0 and out["num_pos"] == 0
    out["loss"].backward()
    assert torch.isfinite(loc.grad).all()
    # one image with an object and one without: the empty image contributes nothing
    mixed = MultiBoxLoss()(loc, logits, [{"boxes": cxcywh_to_xyxy(ANCHORS[:1]), "labels": torch.tensor([0])}, empty],
                           ANCHORS)
    alone = MultiBoxLoss()(loc[:1], logits[:1], [{"boxes": cxcywh_to_xyxy(ANCHORS[:1]),
                                                   "labels": torch.tensor([0])}], ANCHORS)
    assert torch.allclose(mixed["loss"], alone["loss"])
