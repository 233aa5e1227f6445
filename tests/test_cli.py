import subprocess
import sys

from dsod.cli import main


def test_info_prints_the_acceptance_numbers(capsys):
    assert main(["info", "model=dsod300", "num_classes=21"]) == 0
    out = capsys.readouterr().out
    for text in ("14,715,804", "15.08 G", "8,744", "800x38x38", "256x2x2"):
        assert text in out


def test_info_every_preset_by_name(capsys):
    for name in ("dsod-tiny", "dsod300-smallest", "ablation-1-baseline"):
        assert main(["info", f"model={name}"]) == 0
    assert "5,833,372" in (main(["info", "model=dsod300-smallest"]), capsys.readouterr().out)[1]


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
