"""tunefuse: supervised fine-tuning and model fusion with a scikit-learn API."""
from .backbones import BACKBONES, Backbone, list_backbones, register_backbone
from .finetuner import Finetuner
from .strategies import STRATEGIES

__all__ = ["Finetuner", "Backbone", "BACKBONES", "STRATEGIES", "list_backbones", "register_backbone"]
__version__ = "0.1.0"
