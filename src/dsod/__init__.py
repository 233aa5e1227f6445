"""dsod: DSOD (Shen et al., ICCV 2017) object detectors trained from scratch, in PyTorch."""
from .config import PRESETS, AnchorConfig, ModelConfig, get_config
from .model import DSOD, HeadOutputs, build_model

__version__ = "0.1.0"
__all__ = ["DSOD", "HeadOutputs", "build_model", "ModelConfig", "AnchorConfig", "get_config", "PRESETS",
           "__version__"]
