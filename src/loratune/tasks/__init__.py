"""Tasks: what each task needs on top of a model (scoring, how a prediction is shown)."""

from loratune.tasks.seq_cls import (
    classification_metrics,
    format_confusion_matrix,
    format_prediction,
    predict_proba,
    prediction_dict,
)

__all__ = [
    "classification_metrics",
    "format_confusion_matrix",
    "format_prediction",
    "predict_proba",
    "prediction_dict",
]
