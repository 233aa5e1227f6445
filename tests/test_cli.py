import subprocess
import sys

import pytest
import torch

from dsod import PRESETS, build_model
from dsod.cli import main


def test_info_prints_the_acceptance_numbers(capsys):
    assert main(["info", "model=dsod300", "num_classes=21"]) == 0
    out = capsys.readouterr().out
    for text in ("14,715,804", "15.08 G", "8,744", "800x38x38", "256x2x2"):
        assert text in out


def _field(out: str, key: str) -> str:
    """The value of ``key`` in ``dsod info``'s two-column output."""
    (line,) = [x for x in out.splitlines() if x.startswith(key + " ")]
    return line[len(key):].strip()


@pytest.mark.parametrize("name", list(PRESETS))
def test_info_every_preset_by_name(name, capsys):
    """Every preset, summarised as itself (and run once): its own name and input size, and the trainable parameter
    count of the model it names (counted here on a model built apart from the command). Measured on
    the 2-core machine under a background job: 2.5 min for all 22 (dsod512 13 s, the 300 px presets
    8-11 s, the CPU-scale ones 2-6 s), mostly building the model and the MAC count's forward."""
    assert main(["info", f"model={name}"]) == 0
    out = capsys.readouterr().out
    model = build_model(name)
    assert _field(out, "model").split(" (")[0] == name
    size = model.config.image_size
    assert _field(out, "input") == f"3x{size}x{size}"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert _field(out, "trainable params") == f"{trainable:,}"
    if name == "dsod300-smallest":
        assert trainable == 5_833_372  # the paper's smallest DSOD300 (with 21 classes)
    if name not in ("dsod300", "dsod512"):  # and it runs: one score row per default box, finite
        with torch.no_grad():
            scores = model.eval()(torch.randn(1, 3, size, size)).cls_logits
        assert scores.shape[1] == model.anchors_cxcywh.shape[0] and torch.isfinite(scores).all()


def test_bad_values_give_one_line_errors(capsys):
    assert main(["info", "model=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dsod300" in err
    assert main(["info", "modle=dsod300"]) == 2
    assert "unknown key 'modle'" in capsys.readouterr().err
    assert main(["info", "num_classes=-3"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    capsys.readouterr()
    assert main(["train", "augment=heavy"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ssd, light, none" in err
    assert main(["train", "flipud=2"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_console_entry_points():
    out = subprocess.run([sys.executable, "-m", "dsod", "info", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "num_classes" in out.stdout
