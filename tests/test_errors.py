"""Every user-caused failure is a DsodError, and the ``dsod`` command prints it as one line."""
from __future__ import annotations

import pytest
import torch

from dsod.cli import main
from dsod.errors import DsodError


def test_every_user_facing_error_is_a_dsod_error():
    from dsod.bench import BenchError
    from dsod.cli.schema import CLIError
    from dsod.data import DatasetError, ImageError
    from dsod.engine.run import TrainingError
    from dsod.export import ExportError
    from dsod.files import FolderBusy, OutOfSpace
    from dsod.inference.backends import BackendError
    from dsod.inference.predict import PredictError
    from dsod.inference.sessions import ModelFileError
    from dsod.metrics import DetectionsFileError
    from dsod.metrics.evaluator import NothingToEvaluate
    from dsod.model.checkpoint import CheckpointError
    from dsod.model.load import ModelSpecError
    from dsod.runtime.device import DeviceError

    classes = [BenchError, CLIError, DatasetError, ImageError, TrainingError, ExportError, BackendError,
               PredictError, ModelFileError, FolderBusy, OutOfSpace, DetectionsFileError, NothingToEvaluate, CheckpointError, ModelSpecError, DeviceError]
    assert [c for c in classes if not issubclass(c, DsodError)] == []
    # the ones callers catch as ValueError still are
    assert all(issubclass(c, ValueError) for c in (DatasetError, BackendError, ModelSpecError, DeviceError))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from dsod import build_model
    from dsod.model.checkpoint import model_payload, save_checkpoint

    model = build_model("dsod-nano", num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "nano.pt"
    save_checkpoint(path, model_payload(model, model.config, ["RBC", "WBC", "Platelets"], None))
    return path


@pytest.mark.parametrize("command", ["predict", "val"])
def test_device_cuda_without_cuda_is_one_line(command, checkpoint, shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    image = shared_data / "bccd" / "JPEGImages" / "BloodImage_00001.jpg"
    keys = {"predict": [f"source={image}"], "val": [f"data={shared_data / 'bccd'}"]}[command]
    code = main([command, f"model={checkpoint}", "device=cuda", f"project={tmp_path}", *keys])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"dsod {command}: device=cuda: CUDA is not available on this machine; "
                                 "use device=cpu"], err


def test_a_text_file_as_model_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a checkpoint")
    code = main(["predict", f"model={bogus}", f"source={bogus}", f"project={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"dsod predict: {bogus}"), err
