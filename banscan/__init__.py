"""banscan: detect, locate and remove backdoors in image classifiers with adversarial neuron noise."""

__version__ = "0.1.0"

from ._utils import BanscanError
from .checkpoints import load_weights, save_weights
from .data import ImageData, load_data
from .detectors import BAN, DetectionResult, Detector, get_detector, list_detectors
from .models import SplitModel, create_model, list_models

__all__ = [
    "__version__",
    "BAN",
    "BanscanError",
    "DetectionResult",
    "Detector",
    "ImageData",
    "SplitModel",
    "create_model",
    "get_detector",
    "list_detectors",
    "list_models",
    "load_data",
    "load_weights",
    "save_weights",
]
