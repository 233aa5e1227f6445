"""Fast data loading: reduced-size JPEG decoding (``load_image(min_size=...)``) and
``augment.SSDAugment`` checked against the step-by-step reference (``reference_train_transform``,
Caffe's order on full-size pixels), on real BCCD (640x480) and chess_rf100 (2048x1371) photos."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from dsod.data import DetectionDataset, load_dataset, load_image, train_transform
from dsod.data.augment import SSDAugment
from dsod.data.transforms import reference_train_transform


@pytest.fixture(autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bccd_train(shared_data):
    return load_dataset(shared_data / "bccd").records("train")[:6]


@pytest.fixture(scope="module")
def chess_train(shared_data):
    return load_dataset(shared_data / "chess_rf100").records("train")[:4]


def best_shift(a: torch.Tensor, b: torch.Tensor, r: int = 2):
    """The (dy, dx) within +-r pixels that best aligns ``a`` onto ``b`` (mean absolute difference)."""
    h, w = a.shape[-2:]
    a, b = a.float(), b.float()
    err = {(dy, dx): float((a[:, r + dy:h - r + dy, r + dx:w - r + dx] - b[:, r:h - r, r:w - r]).abs().mean())
           for dy in range(-r, r + 1) for dx in range(-r, r + 1)}
    return min(err, key=err.get)


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------- reduced decoding
def test_draft_decode_picks_the_smallest_dct_scale_that_keeps_min_size(chess_train, tmp_path):
    path = chess_train[0].path
    assert load_image(path).shape == (1371, 2048, 3)
    # PIL draft: the largest scale in 8, 4, 2 with size // scale >= min_size; sizes rounded up
    assert load_image(path, min_size=(300, 300)).shape == (343, 512, 3)
    assert load_image(path, min_size=(600, 300)).shape == (686, 1024, 3)
    assert load_image(path, min_size=(100, 100)).shape == (172, 256, 3)
    assert load_image(path, min_size=(2048, 1371)).shape == (1371, 2048, 3)
    # min_size is of the upright image: a file stored transposed (EXIF 6) is drafted transposed
    img = Image.open(path)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif, quality=90)
    assert load_image(tmp_path / "rot.jpg").shape == (2048, 1371, 3)
    assert load_image(tmp_path / "rot.jpg", min_size=(400, 300)).shape == (1024, 686, 3)  # not (512, 343)
    # other formats decode at full size
    Image.open(path).resize((400, 268)).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", min_size=(50, 50)).shape == (268, 400, 3)


def test_draft_decode_keeps_boxes_aligned_with_the_full_decode(chess_train):
    rec = chess_train[0]
    full, small = chw(load_image(rec.path)), chw(load_image(rec.path, min_size=(300, 300)))
    sh, sw = small.shape[-2:]
    ref = F.resize(full, [sh, sw], antialias=True)  # the full decode, area-averaged to the draft's size
    assert best_shift(ref, small) == (0, 0)  # same pixel grid: no offset from the DCT scaling
    assert float((ref.float() - small.float()).abs().mean()) < 3
    # each box, scaled by the decoded size, frames the same content (to within the resampling)
    k = torch.tensor([sw / rec.width, sh / rec.height] * 2)
    for box in torch.as_tensor(rec.boxes)[:8]:
        x0, y0, x1, y1 = (box * k).round().int().tolist()
        fx0, fy0, fx1, fy1 = box.round().int().tolist()
        a = F.resize(small[:, y0:y1, x0:x1], [32, 32], antialias=True).float()
        b = F.resize(full[:, fy0:fy1, fx0:fx1], [32, 32], antialias=True).float()
        assert float((a - b).abs().mean()) < 8


def test_planned_decode_keeps_at_least_one_source_pixel_per_output_pixel(chess_train):
    aug = SSDAugment(300)
    ds = DetectionDataset(chess_train, aug)
    decoded = []
    for seed in range(16):
        rec = chess_train[seed % len(chess_train)]
        torch.manual_seed(seed)
        plan = aug.plan(ds.record_target(rec, rec.height, rec.width))
        h, w = load_image(rec.path, min_size=aug.decode_size(plan)).shape[:2]
        _, _, wh, ww = plan["window"]  # canvas pixels of the crop, warped onto 300 x 300
        assert ww * w / rec.width >= 300 or w == rec.width
        assert wh * h / rec.height >= 300 or h == rec.height
        decoded.append(h * w)
    assert np.mean(decoded) < 0.2 * 2048 * 1371  # mostly 1/4 and 1/8 decodes


# ---------------------------------------------------------------------- fast vs reference pipeline
@pytest.mark.parametrize("mode", ["ssd", "light"])
def test_fast_pipeline_has_the_reference_geometry_within_resampling(bccd_train, chess_train, mode):
    for records, seeds, tol_full, tol_fast in ((bccd_train, 8, 1.0, 1.5), (chess_train, 4, 1.0, 4.0)):
        ref = DetectionDataset(records, reference_train_transform(300, mode=mode))
        full = DetectionDataset(records, SSDAugment(300, mode=mode, reduced_decode=False))
        fast = DetectionDataset(records, train_transform(300, mode=mode))
        err_full, err_fast = [], []
        for seed in range(seeds):
            key = (seed % len(records), seed)
            (xr, tr), (xf, tf), (xd, td) = ref[key], full[key], fast[key]
            assert xr.shape == xf.shape == xd.shape == (3, 300, 300)
            for t in (tf, td):  # the same random draws and box kernels: the very same boxes
                assert torch.equal(t["boxes"], tr["boxes"]) and torch.equal(t["labels"], tr["labels"])
                assert torch.equal(t["difficult"], tr["difficult"]) and t["orig_size"] == tr["orig_size"]
            assert best_shift(xr, xf) == (0, 0) and best_shift(xr, xd) == (0, 0)  # pixels where the boxes are
            err_full.append(float((xr - xf).abs().mean()))
            err_fast.append(float((xr - xd).abs().mean()))
        # mean |difference| in 0-255 levels: resampling (edges, the image/fill border, 8-bit rounding
        # of the distortion) and, for the reduced decode, the DCT scaling's area averaging
        assert np.median(err_full) < tol_full and np.median(err_fast) < tol_fast, (err_full, err_fast)


def test_zoom_out_fill_is_exactly_the_undistorted_mean(bccd_train):
    aug, ref = SSDAugment(300), reference_train_transform(300)
    aug.zoom.p = 1.0  # always zoom out, in both
    next(t for t in ref.transforms if type(t).__name__ == "RandomZoomOut").p = 1.0
    ds = DetectionDataset(bccd_train, lambda image, target: (image, target))
    with_fill = 0
    for seed in range(12):
        image, target = ds[seed % len(bccd_train)]
        target = {k: target[k] for k in ("boxes", "labels", "difficult")}
        torch.manual_seed(seed)
        plan = aug.plan(dict(target))
        plan["distort"]["brightness"] = 32.0  # a distorted fill would show
        x, _ = aug.render(image, plan)
        _, (y0, y1, x0, x1) = aug.region(image.as_subclass(torch.Tensor), plan)
        inside = torch.zeros(300, 300, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        if plan["hflip"]:
            inside = inside.flip(-1)
        assert (x[:, ~inside] == 0).all() and (x[:, inside] != 0).any()  # 0 = mean-subtracted mean
        if (~inside).any():
            with_fill += 1
            # the reference (Caffe order: distort, then expand) has the same fill, away from the
            # border its resize blends (Lanczos reaches 3 pixels)
            torch.manual_seed(seed)
            xr, _ = ref(image, dict(target))
            far = ~torch.nn.functional.max_pool2d(inside[None, None].float(), 7, 1, 3)[0, 0].bool()
            assert (xr[:, far] == 0).all()
    assert with_fill >= 3


def test_fast_samples_are_reproducible_per_seed(chess_train):
    ds = DetectionDataset(chess_train, train_transform(300))
    a, b, c = ds[(1, 5)], ds[(1, 5)], ds[(1, 6)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert not torch.equal(a[0], c[0])
    assert a[1]["orig_size"] == (1371, 2048)  # evaluation maps back to the original pixels


def test_fast_pipeline_on_a_whole_image_is_the_reference_resize(chess_train):
    """No zoom-out, the whole-image sampler, no mirror: the reference resizes the distorted photo,
    SSDAugment distorts the resized one; with the distortion off the two agree to rounding."""
    aug = SSDAugment(300, mode="light")
    rec = chess_train[0]
    image = tv_tensors.Image(chw(load_image(rec.path)))
    ds = DetectionDataset([rec], aug)
    plan = aug.plan(ds.record_target(rec, rec.height, rec.width))
    plan.update(window=(0, 0, rec.height, rec.width), hflip=False, vflip=False,
                distort=dict.fromkeys(plan["distort"], None))
    x, _ = aug.render(image, plan)
    expect = F.resize(image.as_subclass(torch.Tensor), [300, 300], antialias=True)
    assert float((x - aug.to_input(expect, plan["target"])[0]).abs().max()) == 0
