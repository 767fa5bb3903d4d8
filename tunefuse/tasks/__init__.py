"""Tasks by name: one registry of small declarative entries (the task half of backbone × strategy × task).

>>> sorted(TASKS)[:3]
['ctr', 'image-classification', 'image-segmentation']
"""
from __future__ import annotations

from .base import Encoded, Task, cross_entropy, encode_labels, log_loss

TASKS: dict[str, Task] = {}
ALIASES = {"classification": "text-classification", "ner": "token-classification", "qa": "question-answering",
           "image": "image-classification", "segmentation": "image-segmentation",
           "detection": "object-detection", "click-through-rate": "ctr"}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry; a duplicate name is an error, never a silent override."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered; pick another name")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name`` (or one of its short aliases: 'classification', 'ner', 'qa')."""
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in TASKS:
        raise ValueError(f"task={name!r} is not one of {sorted(TASKS)} (aliases: {sorted(ALIASES)}); fix: pick one, "
                         "e.g. task='text-classification'")
    return TASKS[key]


def list_tasks() -> list[str]:
    return sorted(TASKS)


from .ctr import CTR  # noqa: E402
from .image_classification import ImageClassification  # noqa: E402
from .image_segmentation import ImageSegmentation  # noqa: E402
from .object_detection import ObjectDetection  # noqa: E402
from .question_answering import QuestionAnswering  # noqa: E402  (entries register once the registry exists)
from .text_classification import TextClassification  # noqa: E402
from .token_classification import TokenClassification  # noqa: E402

register_task(TextClassification())
register_task(TokenClassification())
register_task(QuestionAnswering())
register_task(ImageClassification())
register_task(ImageSegmentation())
register_task(ObjectDetection())
register_task(CTR())

__all__ = ["Encoded", "TASKS", "Task", "cross_entropy", "encode_labels", "get_task", "list_tasks", "log_loss",
           "register_task"]
