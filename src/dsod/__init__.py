"""dsod: DSOD (Shen et al., ICCV 2017) object detectors trained from scratch, in PyTorch.

    from dsod import train, Detector, build
    train(data="bccd.yaml", model="dsod-tiny", time="30m")
    det = Detector.load("runs/train/weights/best.pt")
    model, criterion, postprocessor = build("dsod300", num_classes=21)

The package map is docs/ARCHITECTURE.md."""
from .config import PRESETS, AnchorConfig, ModelConfig, get_config
from .errors import DsodError
from .model import DSOD, HeadOutputs, build_model
from .version import __version__

__all__ = ["DSOD", "HeadOutputs", "build_model", "build", "train", "Detector", "DsodError", "ModelConfig",
           "AnchorConfig", "get_config", "PRESETS", "__version__"]


def __getattr__(name):
    # the heavier entry points load on first use, so ``import dsod`` stays light
    if name == "build":
        from .families import build
        return build
    if name == "train":
        from .engine.trainer import train
        return train
    if name == "Detector":
        from .inference.predict import Detector
        return Detector
    raise AttributeError(f"module 'dsod' has no attribute {name!r}")
