"""SSD augmentation (docs/ORIGINAL.md §1.8), network-input normalisation (§1.1), the Dataset contract
and seeded multi-worker loading, on real BCCD/COCO128 images."""
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from dsod.config import PIXEL_MEAN_BGR
from dsod.data import (
    DetectionDataset,
    ImageRecord,
    SSDBatchSamplerCrop,
    SSDPhotometricDistort,
    build_dataloader,
    collate,
    eval_transform,
    load_dataset,
    train_transform,
)
from dsod.data.transforms import reference_train_transform


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Per-sample augmentation runs single-threaded, as in DataLoader workers: on a busy 2-core
    machine intra-op threads only spin (10x slower transforms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bccd_train(shared_data):
    return load_dataset(shared_data / "bccd").records("train")


def sample(h=48, w=64, boxes=((8, 8, 40, 30),), labels=None, value=None):
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8) if value is None else \
        torch.tensor(value, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).clone()
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels if labels is not None else [0] * len(b), dtype=torch.int64)
    return tv_tensors.Image(img), {"boxes": tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(h, w)),
                                   "labels": labels, "difficult": torch.zeros(len(b), dtype=torch.bool)}


# ------------------------------------------------------------------------------- normalisation
def test_eval_transform_is_bgr_minus_mean_and_normalised_boxes():
    image, target = sample(480, 640, boxes=((64, 48, 320, 240),), value=(200, 100, 50))  # RGB
    x, t = eval_transform(300)(image, target)
    assert x.shape == (3, 300, 300) and x.dtype == torch.float32
    # channel 0 is blue: 50 - 104; 1 green: 100 - 117; 2 red: 200 - 123 (ORIGINAL.md §1.1, no std)
    assert torch.allclose(x.mean((1, 2)), torch.tensor([50 - PIXEL_MEAN_BGR[0], 100 - PIXEL_MEAN_BGR[1],
                                                        200 - PIXEL_MEAN_BGR[2]]))
    assert torch.allclose(t["boxes"], torch.tensor([[0.1, 0.1, 0.5, 0.5]]))
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64


def test_dataset_output_contract_and_mapping_back_to_pixels(bccd_train):
    ds = DetectionDataset(bccd_train, eval_transform(300), train=False)
    image, t = ds[3]
    rec = bccd_train[3]
    assert image.shape == (3, 300, 300) and image.dtype == torch.float32
    assert set(t) >= {"boxes", "labels", "difficult", "iscrowd", "image_id", "orig_size", "index"}
    assert t["image_id"] == rec.image_id and t["orig_size"] == (480, 640) and t["index"] == 3
    h, w = t["orig_size"]
    back = t["boxes"] * torch.tensor([w, h, w, h])  # what the evaluator does with predictions
    assert torch.allclose(back, torch.from_numpy(rec.boxes), atol=1e-3)
    assert t["labels"].tolist() == rec.labels.tolist() and t["difficult"].dtype == torch.bool
    # mean-subtracted BGR: a real photo has mean near zero, within the 0-255 - mean range
    assert -130 < float(image.min()) and float(image.max()) < 152


def test_training_drops_crowd_evaluation_keeps_it(shared_data):
    recs = [r for r in load_dataset(shared_data / "coco128" / "coco_json" / "instances_train2017.json")
            .records("train") if r.iscrowd.any()][:3]
    assert recs
    for train in (True, False):
        ds = DetectionDataset(recs, eval_transform(128), train=train)
        for i, r in enumerate(recs):
            t = ds[i][1]
            assert len(t["boxes"]) == (int((~r.iscrowd).sum()) if train else len(r.boxes))
            assert ("iscrowd" in t) == (not train)


# --------------------------------------------------------------------------------- augmentation
def test_photometric_distort_follows_caffe_semantics():
    d = SSDPhotometricDistort()
    image, _ = sample(value=(100, 150, 200))
    none = {"brightness": None, "contrast": None, "saturation": None, "hue": None, "contrast_first": True}
    out = d.transform(image, {**none, "brightness": 20.0})
    assert out[:, 0, 0].tolist() == [120, 170, 220]  # additive, not multiplicative
    out = d.transform(image, {**none, "contrast": 1.5})
    assert out[:, 0, 0].tolist() == [150, 225, 255]  # pixel x alpha, saturating (not blended to the mean)
    grey, _ = sample(value=(90, 90, 90))
    assert torch.equal(d.transform(grey, {**none, "hue": 0.05, "saturation": 1.4}), grey)  # no hue on grey
    # probabilities and ranges of the draws: each op p 0.5, brightness +-32, hue +-18 deg, no channel swap
    torch.manual_seed(0)
    ps = [d.make_params([image]) for _ in range(2000)]
    for key in ("brightness", "contrast", "saturation", "hue"):
        assert 0.45 < np.mean([p[key] is not None for p in ps]) < 0.55
    vals = lambda k: [p[k] for p in ps if p[k] is not None]  # noqa: E731
    assert max(map(abs, vals("brightness"))) <= 32 and max(vals("brightness")) > 30
    assert 0.5 <= min(vals("contrast")) and max(vals("saturation")) <= 1.5
    assert max(map(abs, vals("hue"))) <= 18 / 360
    assert "channel_permutation" not in ps[0]


def test_zoom_out_fills_with_the_pixel_mean():
    zoom = next(t for t in reference_train_transform(300).transforms if isinstance(t, v2.RandomZoomOut))
    zoom.p = 1.0
    torch.manual_seed(3)
    image, target = sample(value=(0, 0, 0))
    out, t = zoom(image, target)
    assert out.shape[-1] > 64
    corner = [int(out[c].flatten()[out[c].flatten() != 0][0]) for c in range(3)]  # a canvas pixel
    assert corner == [123, 117, 104]  # RGB order of the BGR mean (104, 117, 123)
    assert t["boxes"].canvas_size == tuple(out.shape[-2:])


def test_batch_sampler_crop_constraints():
    crop = SSDBatchSamplerCrop()
    image, target = sample(200, 300, boxes=((40, 40, 120, 160), (200, 20, 290, 60)))
    boxes = target["boxes"].as_subclass(torch.Tensor).double()
    whole = 0
    torch.manual_seed(0)
    for _ in range(300):
        p = crop.make_params([image, target["boxes"]])
        if not p:
            whole += 1
            continue
        area = p["width"] * p["height"] / (300 * 200)
        aspect = (p["width"] / 300) / (p["height"] / 200)  # relative to the image's, as in Caffe
        assert 0.3 ** 2 * 0.9 <= area <= 1.0 and 0.5 * 0.9 <= aspect <= 2 / 0.9
        c = torch.tensor([[p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]]]).double()
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx >= c[0, 0]) & (cx <= c[0, 2]) & (cy >= c[0, 1]) & (cy <= c[0, 3])
        assert torch.equal(inside, p["is_within_crop_area"]) and inside.any()  # never an empty crop
    assert 300 / 7 * 0.5 < whole < 300 / 7 * 2  # the whole image is one choice among <= 7
    # min IoU constraint only: every crop overlaps some box with IoU >= 0.9
    strict = SSDBatchSamplerCrop(min_ious=(0.9,))
    for _ in range(100):
        p = strict.make_params([image, target["boxes"]])
        if p:
            c = torch.tensor([[p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]]]).double()
            assert box_iou(c, boxes).max() >= 0.9
    # a negative image is never cropped (no IoU constraint can be met without a box, as in Caffe)
    neg_image, neg = sample(boxes=())
    assert all(crop.make_params([neg_image, neg["boxes"]]) == {} for _ in range(20))


def test_train_transform_invariants_on_real_images(bccd_train):
    ds = DetectionDataset(bccd_train[:12], train_transform(300), train=True)
    n_boxes, kept = 0, 0
    for seed in range(36):
        image, t = ds[(seed % 12, seed)]
        rec = bccd_train[seed % 12]
        assert image.shape == (3, 300, 300) and image.dtype == torch.float32
        assert torch.isfinite(image).all() and -124 <= float(image.min()) and float(image.max()) <= 152
        b = t["boxes"]
        assert b.dtype == torch.float32 and b.shape[1] == 4
        assert len(b) == len(t["labels"]) == len(t["difficult"])
        assert (b >= 0).all() and (b <= 1).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert set(t["labels"].tolist()) <= set(rec.labels.tolist()) and len(b) >= 1  # crops keep a box
        n_boxes, kept = n_boxes + len(rec.boxes), kept + len(b)
    assert kept < n_boxes  # crops did drop boxes whose centre fell outside


def test_negatives_tiny_images_and_every_interpolation_pass_through():
    t = train_transform(64)
    for seed in range(40):  # 5 interpolations, zoom, crops: none may crash
        torch.manual_seed(seed)
        x, tg = t(*sample(5, 7, boxes=((0, 0, 7, 5),)))
        assert x.shape == (3, 64, 64) and len(tg["boxes"]) == 1
        torch.manual_seed(seed)
        x, tg = t(*sample(40, 30, boxes=()))
        assert x.shape == (3, 64, 64) and tg["boxes"].shape == (0, 4) and tg["labels"].shape == (0,)


def test_seeded_samples_and_loaders_are_reproducible_and_worker_independent(bccd_train):
    ds = DetectionDataset(bccd_train[:16], train_transform(96), train=True)
    a, b, c = ds[(5, 123)], ds[(5, 123)], ds[(5, 124)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert not torch.equal(a[0], c[0])
    seeded = train_transform(96, seed=7)
    img, tgt = sample(60, 80)
    first = seeded(img, tgt)[0]
    assert not torch.equal(first, seeded(img, tgt)[0])  # a stream, not one repeated draw
    assert torch.equal(first, train_transform(96, seed=7)(img, tgt)[0])

    def batches(workers, seed=0):
        loader = build_dataloader(ds, batch_size=4, shuffle=True, workers=workers, seed=seed, drop_last=True)
        return [(x, [t["index"] for t in y]) for x, y in loader]

    zero, two = batches(0), batches(2)
    assert len(zero) == 4 and [i for _, i in zero] == [i for _, i in two]
    assert all(torch.equal(x0, x2) for (x0, _), (x2, _) in zip(zero, two))
    assert [i for _, i in batches(0, seed=1)] != [i for _, i in zero]
    # a second epoch of the same loader reshuffles and re-augments
    loader = build_dataloader(ds, batch_size=4, shuffle=True, workers=0, seed=0)
    e1, e2 = [y for _, y in loader], [y for _, y in loader]
    assert [t["index"] for y in e1 for t in y] != [t["index"] for y in e2 for t in y]


def test_collate_stacks_images_and_lists_targets():
    t = eval_transform(32)
    batch = [t(*sample(boxes=((1, 1, 9, 9),) * k)) for k in (0, 1, 3)]
    images, targets = collate(batch)
    assert images.shape == (3, 3, 32, 32) and [len(x["boxes"]) for x in targets] == [0, 1, 3]


def test_record_whose_file_changed_size_is_rescaled(tmp_path):
    from PIL import Image
    Image.new("RGB", (200, 100), (10, 20, 30)).save(tmp_path / "x.png")
    rec = ImageRecord("x", tmp_path / "x.png", 100, 50, np.array([[10, 10, 50, 40]], np.float32),
                      np.array([0]), np.array([False]), np.array([False]))
    _, t = DetectionDataset([rec], eval_transform(100), train=False)[0]
    assert torch.allclose(t["boxes"], torch.tensor([[0.1, 0.2, 0.5, 0.8]]))


# ------------------------------------------------------------------- augmentation modes
def test_augment_mode_names_and_bools():
    from dsod.data import augment_mode
    assert augment_mode(True) == "ssd" and augment_mode(False) == "none"
    assert augment_mode("LIGHT") == "light" and augment_mode("false") == "none"
    with pytest.raises(ValueError, match="ssd, light, none"):
        augment_mode("heavy")


@pytest.mark.parametrize("mode", ["light", "none"])
def test_light_and_none_modes_keep_the_contract_on_real_images(bccd_train, mode):
    ds = DetectionDataset(bccd_train[:6], train_transform(224, mode=mode), train=True)
    kept = total = 0
    for seed in range(18):
        image, t = ds[(seed % 6, seed)]
        b = t["boxes"]
        assert image.shape == (3, 224, 224) and torch.isfinite(image).all()
        assert (b >= 0).all() and (b <= 1).all() and (b[:, 2] > b[:, 0]).all() and len(b) >= 1
        kept, total = kept + len(b), total + len(bccd_train[seed % 6].boxes)
    if mode == "none":  # warp-resize only: every box, at its scaled place
        assert kept == total
        image, t = ds[0]
        rec = bccd_train[0]
        scale = torch.tensor([rec.width, rec.height] * 2, dtype=torch.float32)
        torch.testing.assert_close(t["boxes"] * scale, torch.as_tensor(rec.boxes), atol=1e-3, rtol=0)
    else:  # crops at scale >= 0.5 drop some boxes but far fewer than the SSD recipe's 0.3 + zoom-out
        assert 0.5 * total < kept < total


def test_flipud_flips_boxes_vertically(bccd_train):
    plain = DetectionDataset(bccd_train[:1], train_transform(224, mode="none"), train=True)
    flipped = DetectionDataset(bccd_train[:1], train_transform(224, mode="none", flipud=1.0), train=True)
    (x0, t0), (x1, t1) = plain[(0, 0)], flipped[(0, 0)]
    torch.testing.assert_close(x1, x0.flip(-2))
    b0, b1 = t0["boxes"], t1["boxes"]
    torch.testing.assert_close(b1[:, [1, 3]], 1 - b0[:, [3, 1]], atol=1e-6, rtol=0)
    torch.testing.assert_close(b1[:, [0, 2]], b0[:, [0, 2]])
