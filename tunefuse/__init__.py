"""tunefuse: supervised fine-tuning and model fusion with a scikit-learn API.

The names below are imported on first use (PEP 562), so ``tunefuse --help`` and config checks do not pay for
torch and transformers until they need them.
"""
import importlib

_LAZY = {"Finetuner": ".finetuner", "Backbone": ".backbones", "BACKBONES": ".backbones",
         "list_backbones": ".backbones", "register_backbone": ".backbones", "pretrain": ".pretrain",
         "STRATEGIES": ".strategies", "TASKS": ".tasks", "get_task": ".tasks", "list_tasks": ".tasks",
         "register_task": ".tasks"}

__all__ = ["Finetuner", "Backbone", "BACKBONES", "STRATEGIES", "TASKS", "get_task", "list_backbones", "list_tasks",
           "pretrain", "register_backbone", "register_task"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tunefuse' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
