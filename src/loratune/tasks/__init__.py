"""Tasks: what each task family needs on top of a model (data, head, batches, loss, metrics, output).

``get_task(name)`` returns the ``Task`` for a ``--task`` value; ``TASKS`` lists them.
"""

from loratune.errors import LoratuneError
from loratune.tasks.base import Metric, Metrics, Task, TaskData
from loratune.tasks.causal_lm import CausalLMTask
from loratune.tasks.seq_cls import (
    SeqClsTask,
    classification_metrics,
    format_confusion_matrix,
    format_prediction,
    predict_proba,
    prediction_dict,
)
from loratune.tasks.token_cls import TokenClsTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (SeqClsTask, TokenClsTask, CausalLMTask)}


def get_task(name: str) -> Task:
    """The task called ``name`` (``seq-cls``, ``token-cls``, ``causal-lm``; ``seq_cls`` is accepted too)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in TASKS:
        raise LoratuneError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[key]()


def task_for_peft_type(task_type: str | None) -> Task:
    """The task whose adapters PEFT saves with ``task_type`` (``SEQ_CLS`` ...); seq-cls when it is unknown."""
    for cls in TASKS.values():
        if cls.peft_task_type == str(task_type or "").upper():
            return cls()
    return SeqClsTask()


__all__ = [
    "TASKS",
    "CausalLMTask",
    "Metric",
    "Metrics",
    "SeqClsTask",
    "Task",
    "TaskData",
    "TokenClsTask",
    "classification_metrics",
    "format_confusion_matrix",
    "format_prediction",
    "get_task",
    "predict_proba",
    "prediction_dict",
    "task_for_peft_type",
]
