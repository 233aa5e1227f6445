import math

import torch

from dsod.geometry.boxes import cxcywh_to_xyxy
from dsod.model.loss import MultiBoxLoss

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


# --- the batched, synchronisation-free loss against the per-image implementation it replaced ------

def _reference_loss(loc, logits, targets, anchors, neg_pos_ratio=3):
    """The previous MultiBoxLoss: a Python loop over images, boolean-mask sums, double argsort."""
    from helpers import reference_match

    from dsod.geometry.box_coder import encode
    from dsod.geometry.boxes import box_iou, xyxy_to_cxcywh

    anchors_xyxy = cxcywh_to_xyxy(anchors)
    cls_t, loc_t, cand = [], [], []
    for t in targets:
        boxes, labels = t["boxes"].to(anchors), t["labels"]
        matched, max_iou = reference_match(box_iou(boxes, anchors_xyxy))
        pos, safe = matched >= 0, matched.clamp(min=0)
        if len(boxes):
            cls = torch.where(pos, labels[safe] + 1, torch.zeros_like(matched))
            lt = encode(xyxy_to_cxcywh(boxes[safe]), anchors)
            lt = torch.where(pos[:, None], lt, torch.zeros_like(lt))
        else:
            cls, lt = torch.zeros_like(matched), torch.zeros_like(anchors)
        cls_t.append(cls)
        loc_t.append(lt)
        cand.append(~pos & (max_iou < 0.5))
    cls_t, loc_t, cand = torch.stack(cls_t), torch.stack(loc_t), torch.stack(cand)
    pos = cls_t > 0
    npos = pos.sum(dim=1)
    norm = npos.sum().clamp(min=1).float()
    loc_loss = torch.nn.functional.smooth_l1_loss(loc.float()[pos], loc_t[pos], reduction="sum")
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), cls_t.flatten(), reduction="none")
    ce = ce.view_as(cls_t)
    with torch.no_grad():
        neg_loss = torch.where(cand, ce, torch.full_like(ce, -float("inf")))
        rank = neg_loss.argsort(dim=1, descending=True).argsort(dim=1)
        neg = rank < torch.minimum(neg_pos_ratio * npos, cand.sum(dim=1))[:, None]
    return (cls_t, loc_t, cand), loc_loss / norm, ce[pos | neg].sum() / norm


def _bccd_like_batch(gen, n, num_anchors, classes=3):
    """BCCD-like targets: 0-28 cells per image (one image without objects), sizes 5-25% of the side."""
    targets = []
    for i in range(n):
        g = 0 if i == 1 else int(torch.randint(5, 29, (1,), generator=gen))
        xy = torch.rand(g, 2, generator=gen) * 0.75
        wh = torch.rand(g, 2, generator=gen) * 0.2 + 0.05
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(0, classes, (g,), generator=gen)})
    loc = torch.randn(n, num_anchors, 4, generator=gen, requires_grad=True)
    logits = torch.randn(n, num_anchors, classes + 1, generator=gen, requires_grad=True)
    return loc, logits, targets


def _anchors(size=6):
    """A small SSD-like grid: size x size cells, 2 boxes each (square and 2:1)."""
    c = (torch.arange(size).float() + 0.5) / size
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    cells = torch.stack([cx.flatten(), cy.flatten()], 1)
    sq = torch.cat([cells, torch.full_like(cells, 2.0 / size)], 1)
    wide = torch.cat([cells, torch.tensor([[2.8 / size, 1.4 / size]]).expand(len(cells), 2)], 1)
    return torch.cat([sq, wide])


def test_batched_loss_equals_the_previous_per_image_loss():
    from helpers import assert_norm_close

    gen = torch.Generator().manual_seed(0)
    for anchors in (_anchors(6), _anchors(19)):
        for _ in range(3):
            loc, logits, targets = _bccd_like_batch(gen, 5, len(anchors))
            (cls_r, loc_r, cand_r), ll_r, lc_r = _reference_loss(loc, logits, targets, anchors)
            crit = MultiBoxLoss()
            cls_t, loc_t, cand = crit.build_targets(targets, anchors)
            # the targets are identical to the bit; the loss sums the same terms in another order
            assert torch.equal(cls_t, cls_r) and torch.equal(cand, cand_r) and torch.equal(loc_t, loc_r)
            out = crit(loc, logits, targets, anchors)
            assert math.isclose(out["loss_loc"].item(), ll_r.item(), rel_tol=1e-6)
            assert math.isclose(out["loss_conf"].item(), lc_r.item(), rel_tol=1e-6)
            g_new = torch.autograd.grad(out["loss"], [loc, logits])
            g_ref = torch.autograd.grad(ll_r + lc_r, [loc, logits])
            for a, b in zip(g_new, g_ref):
                assert_norm_close(a, b, 1e-6)
                assert torch.equal(a != 0, b != 0)  # the same boxes get a gradient


def test_loss_has_no_host_synchronisation():
    from helpers import assert_no_host_sync

    gen = torch.Generator().manual_seed(1)
    anchors = _anchors(6)
    loc, logits, targets = _bccd_like_batch(gen, 3, len(anchors))
    with assert_no_host_sync():
        MultiBoxLoss()(loc, logits, targets, anchors)
