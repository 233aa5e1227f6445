import math

import torch

from dsod.config import DSOD300, DSOD512
from dsod.geometry.anchors import anchors_per_location, default_aspect_ratios, default_boxes, ssd_sizes

SIZES_300 = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (2, 2)]


def test_ssd_size_rule_300():
    mins, maxs = ssd_sizes(300, 6, (20, 90), (10, 20))
    assert mins == [30, 60, 111, 162, 213, 264]
    assert maxs == [60, 111, 162, 213, 264, 315]


def test_counts_and_per_location():
    ratios = default_aspect_ratios(6)
    assert anchors_per_location(ratios) == [4, 6, 6, 6, 4, 4]
    assert default_boxes(DSOD300.anchors, 300, SIZES_300).shape == (8744, 4)


def test_hand_computed_first_scale():
    boxes = default_boxes(DSOD300.anchors, 300, SIZES_300).double()
    c = 4 / 300  # (0 + 0.5) * step 8
    r2 = math.sqrt(2)
    expected = torch.tensor([
        [c, c, 30 / 300, 30 / 300],
        [c, c, math.sqrt(30 * 60) / 300, math.sqrt(30 * 60) / 300],
        [c, c, 30 * r2 / 300, 30 / r2 / 300],
        [c, c, 30 / r2 / 300, 30 * r2 / 300],
    ], dtype=torch.float64)
    assert torch.allclose(boxes[:4], expected, atol=1e-6)
    # location (row 0, col 1): x centre moves by one step of 8 px
    assert torch.allclose(boxes[4, :2], torch.tensor([12 / 300, 4 / 300], dtype=torch.float64), atol=1e-7)


def test_hand_computed_second_scale_with_ratio_3():
    boxes = default_boxes(DSOD300.anchors, 300, SIZES_300).double()
    start = 38 * 38 * 4
    # scale 2, location (row 1, col 2): centre ((2.5) * 16, (1.5) * 16) px; 6 boxes per location
    i = start + (1 * 19 + 2) * 6
    cx, cy = 2.5 * 16 / 300, 1.5 * 16 / 300
    r3 = math.sqrt(3)
    assert torch.allclose(boxes[i + 4], torch.tensor([cx, cy, 60 * r3 / 300, 60 / r3 / 300], dtype=torch.float64))
    assert torch.allclose(boxes[i + 5], torch.tensor([cx, cy, 60 / r3 / 300, 60 * r3 / 300], dtype=torch.float64))
    assert torch.allclose(boxes[i + 1, 2], torch.tensor(math.sqrt(60 * 111) / 300, dtype=torch.float64))


def test_two_by_two_quirk_of_the_original_code():
    boxes = default_boxes(DSOD300.anchors, 300, SIZES_300)
    last = boxes[-16:].view(4, 4, 4)
    centres = last[:, 0, :2]
    # step 300 on a 2x2 map: centres at 150 and 450 px -> 0.5 and 1.5 normalised
    assert torch.allclose(centres, torch.tensor([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]]))
    assert torch.allclose(last[0, 0, 2:], torch.tensor([264 / 300, 264 / 300]))


def test_uniform_steps_when_not_given_512():
    sizes = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    boxes = default_boxes(DSOD512.anchors, 512, sizes)
    assert boxes.shape == (24564, 4)  # SSD512's count
    mins, _ = ssd_sizes(512, 7, (15, 90), (4, 10))
    assert [round(m, 2) for m in mins] == [20.48, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8]
    # last source: one location at the image centre (step 512)
    assert torch.allclose(boxes[-1, :2], torch.tensor([0.5, 0.5]))
