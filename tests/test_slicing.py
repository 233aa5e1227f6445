"""Sliced inference (dsod.inference.slicing): the tile grid, the slice=auto decision from the
checkpoint's training image sizes, the merged detections equal to the tiles run one by one, and the
keys of dsod predict / dsod val."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import confident_dsod_nano

from dsod.cli import main
from dsod.inference.slicing import decide_tile, detect_sliced, tile_grid, train_geometry
from dsod.model.checkpoint import load_checkpoint

NAMES = ["Platelets", "RBC", "WBC"]


@pytest.mark.parametrize("h,w,tile", [(1371, 2048, 640), (1080, 1920, 512), (480, 640, 640), (300, 2000, 256)])
def test_tiles_cover_the_image_overlap_and_end_at_the_border(h, w, tile):
    tiles = tile_grid(h, w, tile, overlap=0.2)
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in tiles:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == min(tile, w) and y1 - y0 == min(tile, h)
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    assert xs[-1] + min(tile, w) == w  # the last column is flush with the border
    if len(xs) > 1:  # neighbours overlap by at least 20% of the tile
        assert all(b - a <= 0.8 * tile for a, b in zip(xs, xs[1:]))
    assert len(tile_grid(h, w, max(h, w))) == 1


def test_slice_auto_follows_the_training_image_sizes():
    geo = {"image_width": 640.0, "image_height": 480.0, "object_side": 0.1}
    assert decide_tile("auto", (480, 640), geo)[0] is None  # the training size: whole images
    tile, why = decide_tile("auto", (1920, 2560), geo)  # 4x larger
    assert tile == round((640 * 480) ** 0.5) and "4.0x the training images' 640x480" in why
    assert "slice=false" in why
    assert decide_tile("auto", (1920, 2560), None) == (None, "slice=auto: whole images (the checkpoint records "
                                                                  "no training image sizes; slice=N tiles)")
    assert decide_tile("512", (10, 10), None)[0] == 512 and decide_tile("false", (9999, 9999), geo)[0] is None
    for bad in ("abc", "16"):
        with pytest.raises(ValueError):
            decide_tile(bad, (1, 1), None)


def test_merged_detections_are_the_tiles_run_one_by_one_then_class_wise_nms(shared_data):
    """One batch of the whole image and its tiles gives what each crop gives alone through the plain
    Detector (shifted to image pixels), merged by class-wise NMS; a tile as large as the image is the
    plain path exactly."""
    from PIL import Image
    from torchvision.ops import batched_nms

    from dsod.inference.predict import Detector
    from dsod.inference.runners import TorchRunner

    model = confident_dsod_nano(len(NAMES))
    det = Detector(TorchRunner(model), NAMES, model.config.image_size, conf=0.3)
    rgb = np.asarray(Image.open(next((shared_data / "chess_rf100" / "test" / "images").iterdir())).convert("RGB"))
    h, w = rgb.shape[:2]
    got = detect_sliced(det.runner, det.postprocessor, rgb, det.image_size, tile=1024)
    tiles = [(0, 0, w, h)] + tile_grid(h, w, 1024)
    alone = [det.predict_arrays([np.ascontiguousarray(rgb[y0:y1, x0:x1])])[0] for x0, y0, x1, y1 in tiles]
    boxes = torch.cat([a["boxes"] + torch.tensor([x0, y0, x0, y0]) for a, (x0, y0, _, _) in zip(alone, tiles)])
    scores, labels = torch.cat([a["scores"] for a in alone]), torch.cat([a["labels"] for a in alone])
    keep = batched_nms(boxes, scores, labels, 0.45)[:200]
    assert len(got["scores"]) == len(keep) > 0
    torch.testing.assert_close(got["scores"], scores[keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["boxes"], boxes[keep], rtol=0, atol=1e-3)
    assert torch.equal(got["labels"], labels[keep])
    whole = detect_sliced(det.runner, det.postprocessor, rgb, det.image_size, tile=max(h, w))
    plain = det.predict_arrays([rgb])[0]
    torch.testing.assert_close(whole["scores"], plain["scores"])
    assert torch.equal(whole["labels"], plain["labels"])


def test_training_records_its_image_sizes_and_predict_and_val_slice(shared_data, tmp_path, capsys):
    root = tmp_path / "voc"
    names = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002"]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for n in names:
        shutil.copy(shared_data / "bccd" / "Annotations" / f"{n}.xml", root / "Annotations")
        shutil.copy(shared_data / "bccd" / "JPEGImages" / f"{n}.jpg", root / "JPEGImages")
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    assert main(["train", f"data={root}", "model=dsod-nano", "iterations=1", "batch=2", "workers=0", "val=false",
                 "plots=false", "progress=false", "precise_bn=false", "device=cpu", f"project={tmp_path}",
                 "name=t"]) == 0
    last = tmp_path / "t" / "weights" / "last.pt"
    from dsod.data import load_dataset

    want = train_geometry(load_dataset(root).records("train"))
    assert load_checkpoint(last)["train_geometry"] == want and want["image_width"] == 640.0
    capsys.readouterr()
    common = [f"model={last}", "backend=torch", f"project={tmp_path}", "exist_ok=true"]
    assert main(["predict", f"source={root / 'JPEGImages'}", "name=p", *common]) == 0
    assert "slice=auto: whole images (640x480 is 1.0x the training images' 640x480" in capsys.readouterr().out
    assert main(["val", f"data={root}", "slice=320", "plots=false", "name=v", *common]) == 0
    out = capsys.readouterr().out
    assert "slice=320: 320-px tiles" in out and "AP50-07" in out
    assert main(["predict", f"source={root}", "slice=abc", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dsod predict: slice=abc is not valid: use auto, false or a tile size in pixels"
