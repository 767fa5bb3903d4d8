"""tunefuse: supervised fine-tuning and model fusion with a scikit-learn API."""
from .backbones import BACKBONES, Backbone, list_backbones, register_backbone
from .finetuner import Finetuner
from .pretrain import pretrain
from .strategies import STRATEGIES
from .tasks import TASKS, get_task, list_tasks, register_task

__all__ = ["Finetuner", "Backbone", "BACKBONES", "STRATEGIES", "TASKS", "get_task", "list_backbones", "list_tasks",
           "pretrain", "register_backbone", "register_task"]
__version__ = "0.1.0"
