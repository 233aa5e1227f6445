import math

import torch
from helpers import reference_match as _reference_match

from dsod.geometry.box_coder import decode, encode
from dsod.geometry.boxes import box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh
from dsod.geometry.matching import match


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


# --- the sync-free matcher against the implementation it replaced -------------------------------

def _random_iou(gen, num_gt, num_anchors):
    """IoU-like matrices built to hit every branch: continuous values, a few levels only (ties
    between pairs, between ground truths of one box, between boxes of one ground truth), values at
    and around Caffe's 1e-6 cut-off, ground truths overlapping nothing, and exact zeros."""
    kind = int(torch.randint(0, 4, (1,), generator=gen))
    if kind == 0:
        iou = torch.rand(num_gt, num_anchors, generator=gen)
    elif kind == 1:  # heavy ties
        iou = torch.randint(0, 5, (num_gt, num_anchors), generator=gen).float() / 4
    elif kind == 2:  # sparse, like real boxes: most pairs do not overlap
        keep = torch.rand(num_gt, num_anchors, generator=gen) < 0.2
        iou = torch.rand(num_gt, num_anchors, generator=gen) * keep
    else:  # the 1e-6 cut-off
        levels = torch.tensor([0.0, 1e-6, 2e-6, 0.3, 0.5, 0.5, 0.7])
        iou = levels[torch.randint(0, len(levels), (num_gt, num_anchors), generator=gen)]
    if num_gt and torch.rand(1, generator=gen) < 0.3:
        iou[torch.randint(0, num_gt, (1,), generator=gen)] = 0.0  # a ground truth that overlaps nothing
    return iou


def test_sync_free_match_equals_the_previous_implementation_on_random_matrices():
    gen = torch.Generator().manual_seed(0)
    cases = 0
    for _ in range(400):
        num_gt = int(torch.randint(0, 13, (1,), generator=gen))
        num_anchors = int(torch.randint(1, 30, (1,), generator=gen))  # often fewer boxes than ground truths
        iou = _random_iou(gen, num_gt, num_anchors)
        for thr in (0.5, 0.3):
            want = _reference_match(iou, thr)
            got = match(iou, thr)
            assert torch.equal(got[0], want[0]), (iou, thr)
            assert torch.equal(got[1], want[1])
            cases += 1
    assert cases == 800


def test_ties_go_to_the_first_pair_in_row_major_order():
    # every pair ties: ground truth 0 takes box 0, 1 takes box 1, ... (a plain topk of the IoU could
    # keep any of the tied boxes in the candidate lists; the index-keyed one keeps the lowest)
    iou = torch.full((3, 40), 0.5)
    assert match(iou, 0.9)[0].tolist() == [0, 1, 2] + [-1] * 37
    # ties across ground truths for one box: the lower ground truth wins it, the other moves on
    iou = torch.tensor([[0.7, 0.7, 0.1], [0.7, 0.7, 0.1]])
    assert match(iou, 0.9)[0].tolist() == [0, 1, -1]
    assert torch.equal(match(iou)[0], _reference_match(iou)[0])


def test_match_many_equals_match_per_image():
    from dsod.geometry.matching import match_many

    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        num_anchors = int(torch.randint(1, 25, (1,), generator=gen))
        counts = torch.randint(0, 9, (n,), generator=gen).tolist()  # images without objects too
        mats = [_random_iou(gen, c, num_anchors) for c in counts]
        for thr in (0.5, 0.0):  # 0: every box of an image with objects is assigned, none of one without
            matched, max_iou = match_many(mats, thr)
            for i, m in enumerate(mats):
                want = _reference_match(m, thr)
                assert torch.equal(matched[i], want[0]) and torch.equal(max_iou[i], want[1]), (m, counts)


def test_match_has_no_host_synchronisation():
    from helpers import assert_no_host_sync

    from dsod.geometry.matching import match_many

    iou = torch.rand(3, 7, 50)
    with assert_no_host_sync():
        match(iou[0])
        match_many([iou[0], iou[1, :3], iou[2, :0]])


def _dsod300_anchors():
    from dsod.config import get_config
    from dsod.geometry.anchors import default_boxes
    from dsod.model.factory import feature_sizes

    cfg = get_config("dsod300")
    return default_boxes(cfg.anchors, cfg.image_size, feature_sizes(cfg))


def test_sync_free_match_equals_the_previous_implementation_on_bccd(shared_data):
    """BCCD train images' boxes (13-28 per image, many touching or overlapping cells) against
    DSOD300's 8744 default boxes: identical assignments, one image at a time and in batches of 16."""
    from dsod.data import load_dataset
    from dsod.geometry.matching import match_many

    anchors = cxcywh_to_xyxy(_dsod300_anchors())
    records = load_dataset(str(shared_data / "bccd")).records("train")[:64]
    ious = []
    for r in records:
        boxes = torch.from_numpy(r.boxes) / torch.tensor([r.width, r.height, r.width, r.height])
        ious.append(box_iou(boxes, anchors))
    positives = 0
    for iou in ious:
        want = _reference_match(iou)
        got = match(iou)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        positives += int((want[0] >= 0).sum())
    assert positives > 20 * len(records)  # the per-prediction step is exercised too
    for start in range(0, len(ious), 16):  # batches of 16, as training sees them
        chunk = ious[start:start + 16]
        matched, max_iou = match_many(chunk)
        for i, m in enumerate(chunk):
            want = _reference_match(m)
            assert torch.equal(matched[i], want[0]) and torch.equal(max_iou[i], want[1])
