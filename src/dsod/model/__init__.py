from .detector import DSOD, HeadOutputs
from .factory import build_backbone, build_model, feature_sizes

__all__ = ["DSOD", "HeadOutputs", "build_backbone", "build_model", "feature_sizes"]
