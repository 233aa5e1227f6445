"""engine/plots.py draws on a ``matplotlib.figure.Figure`` of its own: each picture is written (a
decodable image with content) and the process's matplotlib backend is left as the caller had it."""
import csv

import matplotlib
import numpy as np
import pytest
import torch
from helpers import confident_dsod_nano
from PIL import Image


@pytest.fixture()
def keep_backend():
    """A backend other than Agg (headless default) chosen before the calls, so that a library call
    switching to Agg shows; the original one is restored afterwards."""
    original = matplotlib.get_backend()
    matplotlib.use("pdf")
    yield matplotlib.get_backend()
    matplotlib.use(original)


def _bccd_batch(shared_data, n=4, size=160):
    from dsod.data import DetectionDataset, build_dataloader, eval_transform, load_dataset

    spec = load_dataset(shared_data / "bccd")
    ds = DetectionDataset(spec.records("val")[:n], eval_transform(size), train=False)
    return spec.info.names, build_dataloader(ds, n)


def _assert_picture(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        im.load()  # decodes the whole file: a truncated one raises
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 1  # not a blank canvas
    assert not list(path.parent.glob(".*tmp*"))  # the atomic write left no temporary file


def test_plot_results_writes_a_png_and_keeps_the_backend(tmp_path, keep_backend):
    from dsod.engine.plots import plot_results

    csv_path = tmp_path / "results.csv"
    keys = ["iteration", "loss", "loss_loc", "loss_conf", "lr", "voc07_map50", "voc_area_map50", "coco_ap"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for i in range(1, 6):
            w.writerow({"iteration": 10 * i, "loss": 5 / i, "loss_loc": 2 / i, "loss_conf": 3 / i, "lr": 1e-3 * i,
                        "voc07_map50": 0.1 * i if i % 2 == 0 else "", "voc_area_map50": "", "coco_ap": ""})
    plot_results(csv_path, tmp_path / "results.png")
    _assert_picture(tmp_path / "results.png")
    assert matplotlib.get_backend() == keep_backend


def test_plot_batch_and_predictions_on_bccd(shared_data, tmp_path, keep_backend):
    from dsod.engine.plots import plot_batch, plot_predictions
    from dsod.inference.postprocess.detection_output import PostProcessor

    names, loader = _bccd_batch(shared_data)
    images, targets = next(iter(loader))
    assert sum(len(t["boxes"]) for t in targets) > 0
    plot_batch(images, targets, names, tmp_path / "train_batch0.jpg")
    _assert_picture(tmp_path / "train_batch0.jpg")
    assert matplotlib.get_backend() == keep_backend

    torch.manual_seed(0)
    model = confident_dsod_nano(len(names))
    plot_predictions(model, loader, PostProcessor(), names, tmp_path / "val_predictions.jpg", "cpu", conf=0.0)
    _assert_picture(tmp_path / "val_predictions.jpg")
    assert not model.training  # put back as it was (eval here)
    assert matplotlib.get_backend() == keep_backend
