"""Sequence classification: one label per text. Scoring (accuracy, macro F1, confusion matrix), and how
a prediction is shown (the label plus per-label softmax confidences)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from torch import nn

from loratune.data.batching import DynamicPaddingCollator, tokenize_dataset
from loratune.data.labelled_texts import TextClassificationData, load_labelled_texts
from loratune.data.options import DataOptions
from loratune.errors import DataError
from loratune.tasks.base import Encoded, Metric, Task, forward_rows, refuse_tagging_options

TASK_TYPE = "SEQ_CLS"  # PEFT's task_type in adapter_config.json
AUTO_CLASS = "AutoModelForSequenceClassification"
OTHER_TASKS = (
    "--task token-cls reads tokens with a tag each (CoNLL lines, or JSON records with tokens and tags), "
    "--task causal-lm reads instruction records (instruction, input, output) or plain .txt text"
)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def classification_metrics(preds: Any, labels: Any, num_labels: int) -> dict[str, Any]:
    """Accuracy, macro F1 over the classes that occur in ``labels``, and the confusion matrix (all
    ``num_labels`` classes).

    A class absent from ``labels`` has no F1 to average (predictions of it lower the recall of the
    classes that do occur), so data of a single class is scored on that class.

    ``preds`` are class ids, or logits/probabilities of shape ``(n, num_labels)`` (argmax is taken).
    ``confusion_matrix[i][j]`` counts examples of true class ``i`` predicted as ``j``.
    """
    p = _as_numpy(preds)
    y = _as_numpy(labels).reshape(-1)
    if p.ndim == 2:
        p = p.argmax(axis=-1)
    p = p.reshape(-1).astype(np.int64)
    y = y.astype(np.int64)
    if len(p) != len(y):
        raise DataError(f"{len(p)} predictions for {len(y)} labels; pass one prediction per example.")
    if len(y) == 0:
        raise DataError("no examples to score; pass a non-empty eval set.")
    present = sorted(set(y.tolist()))
    return {
        "accuracy": float(accuracy_score(y, p)),
        "macro_f1": float(f1_score(y, p, labels=present, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(y, p, labels=list(range(num_labels))).tolist(),
        "num_examples": len(y),
    }


def format_confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """A plain-text table: one row per true label, one column per predicted label."""
    corner = "true \\ pred"
    names = [str(name) for name in labels]
    first = max(len(corner), *(len(n) for n in names))
    width = max(5, *(len(n) for n in names), *(len(str(v)) for row in cm for v in row))
    lines = [corner.ljust(first) + "".join(f"  {n:>{width}}" for n in names)]
    for name, row in zip(names, cm, strict=True):
        lines.append(name.ljust(first) + "".join(f"  {int(v):>{width}d}" for v in row))
    return "\n".join(lines)


def prediction_dict(text: str, probs: Any, labels: Sequence[str]) -> dict[str, Any]:
    """JSON-ready prediction: ``{"text", "label", "label_id", "confidence", "probs": {name: p}}``."""
    p = _as_numpy(probs).astype(np.float64).reshape(-1)
    if len(p) != len(labels):
        raise DataError(f"{len(p)} probabilities for {len(labels)} labels; pass one probability per label.")
    best = int(p.argmax())
    return {
        "text": text,
        "label": str(labels[best]),
        "label_id": best,
        "confidence": float(p[best]),
        "probs": {str(name): float(v) for name, v in zip(labels, p, strict=True)},
    }


def format_prediction(text: str, probs: Any, labels: Sequence[str], *, max_text: int = 60) -> str:
    """One line: ``positive (0.973)  [negative 0.027 | positive 0.973]  "the text..."``."""
    return format_record(prediction_dict(text, probs, labels), max_text=max_text)


def format_record(d: dict[str, Any], *, max_text: int = 60) -> str:
    """``prediction_dict``'s record as the line of ``format_prediction``."""
    per_label = " | ".join(f"{name} {p:.3f}" for name, p in d["probs"].items())
    snippet = " ".join(str(d["text"]).split())
    if len(snippet) > max_text:
        snippet = snippet[: max_text - 3].rstrip() + "..."
    return f'{d["label"]} ({d["confidence"]:.3f})  [{per_label}]  "{snippet}"'


@torch.no_grad()
def encode_texts(texts: Sequence[str], tokenizer: Any, max_length: int) -> Encoded:
    """Each text's token ids (truncated to ``max_length``, unpadded); a classifier needs no other context."""
    texts = [str(t) for t in texts]
    enc = tokenizer(texts, truncation=True, max_length=max_length) if texts else {}
    inputs = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
    return Encoded(texts, inputs, [None] * len(texts), max_length)


def predict_proba(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Softmax class probabilities, shape ``(len(texts), num_labels)``, in eval mode, batch by batch
    (``device``: where the inputs go; by default the model's)."""
    encoded = encode_texts(texts, tokenizer, max_length)
    rows = forward_rows(model, tokenizer, encoded, batch_size=batch_size, device=device)
    if not rows:
        n = int(getattr(getattr(model, "config", None), "num_labels", 0))
        return np.zeros((0, n), dtype=np.float32)
    return torch.softmax(torch.stack(rows), dim=-1).numpy()


class ClassificationMetrics:
    """Logits, labels and the mean loss of one evaluation pass; ``compute`` scores them."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.loss_sum, self.count = 0.0, 0

    def update(self, outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        self.logits.append(outputs.logits.float().cpu())
        self.labels.append(batch["labels"].cpu())
        self.loss_sum += float(outputs.loss) * batch["labels"].shape[0]
        self.count += batch["labels"].shape[0]

    def merge(self, other: ClassificationMetrics) -> None:
        self.logits += other.logits
        self.labels += other.labels
        self.loss_sum += other.loss_sum
        self.count += other.count

    def compute(self) -> dict[str, Any]:
        metrics = classification_metrics(torch.cat(self.logits), torch.cat(self.labels), self.num_labels)
        metrics["loss"] = self.loss_sum / max(self.count, 1)
        return metrics


def _only_column(matrix: Sequence[Sequence[int]] | None) -> int | None:
    """The one predicted class of a confusion matrix whose predictions all fall in one column, else None."""
    if not matrix:
        return None
    used = [j for j in range(len(matrix[0])) if any(row[j] for row in matrix)]
    return used[0] if len(used) == 1 else None


class SeqClsTask(Task):
    """Sequence classification (``AutoModelForSequenceClassification``); the best run has the top accuracy."""

    name = "seq-cls"
    peft_task_type = TASK_TYPE
    auto_class = AUTO_CLASS
    metric = Metric("accuracy")
    summary_metrics = ("accuracy", "macro_f1")

    def learned_nothing(self, evals: Sequence[dict[str, Any]]) -> str | None:
        """Every evaluation predicted one and the same label for every example (its confusion matrix has one
        non-empty column): the classifier learned the majority label only."""
        columns = {_only_column(e.get("confusion_matrix")) for e in evals}
        if not evals or None in columns or len(columns) != 1:
            return None
        return (
            f"every evaluation predicted one label (id {columns.pop()}) for every example: the model learned no "
            "more than the most common label; try more epochs or another --lr, and check the labels match the texts"
        )

    def load_data(self, options: DataOptions) -> TextClassificationData:
        """The labelled texts; data with no text or label column is an error that names what each task reads.
        With ``options.for_eval``, a single class is enough (only a classifier's training data needs two)."""
        refuse_tagging_options(options, self.name)
        try:
            return load_labelled_texts(options, min_train_classes=1 if options.for_eval else 2)
        except DataError as err:
            if " column found in " not in str(err):
                raise
            raise DataError(f"{str(err).rstrip('.')}, or pick the task this data is for: {OTHER_TASKS}") from None

    def load_eval_data(self, options: DataOptions, info: dict[str, Any]) -> TextClassificationData:
        """Data to evaluate an artifact on, with the artifact's label ids (``info["labels"]``)."""
        data = self.load_data(options)
        labels = list(info["labels"])
        unknown = sorted(set(data.labels) - set(labels))
        if unknown:
            raise DataError(
                f"the eval data has labels the adapter does not know: {', '.join(unknown)} "
                f"(it knows {', '.join(labels)}); pass data with the same label names"
            )
        ids = [labels.index(data.labels[i]) for i in data.eval["label"]]
        evaluated = datasets.Dataset.from_dict({"text": data.eval["text"], "label": ids}, features=data.eval.features)
        return dataclasses.replace(data, eval=evaluated, labels=labels)

    def tokenize(self, split: Any, tokenizer: Any, max_length: int) -> Any:
        return tokenize_dataset(split, tokenizer, max_length)

    def collator(self, tokenizer: Any, *, max_length: int | None, pad_to_multiple_of: int | None) -> Callable:
        return DynamicPaddingCollator(tokenizer, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of)

    def metrics(self, data: TextClassificationData) -> ClassificationMetrics:
        return ClassificationMetrics(data.num_labels)

    def artifact_info(self, data: TextClassificationData) -> dict[str, Any]:
        return {"labels": data.labels}

    def encode(self, texts: Sequence[str], tokenizer: Any, info: dict[str, Any], *, max_length: int) -> Encoded:
        """Each text's token ids (truncated to ``max_length``, unpadded); no context is needed."""
        return encode_texts(texts, tokenizer, max_length)

    def decode(self, logits_rows: Sequence[torch.Tensor | None], encoded: Encoded, info: dict[str, Any]) -> list:
        """``prediction_dict`` records from each text's class logits."""
        labels = info["labels"]
        return [
            prediction_dict(text, torch.softmax(row.float(), dim=-1), labels)
            for text, row in zip(encoded.texts, logits_rows, strict=True)
        ]

    def predict(
        self,
        model: nn.Module,
        tokenizer: Any,
        texts: Sequence[str],
        info: dict[str, Any],
        *,
        max_length: int = 256,
        batch_size: int = 32,
    ) -> list:
        """``encode`` -> the model in batches of ``batch_size`` -> ``decode``."""
        encoded = self.encode(texts, tokenizer, info, max_length=max_length)
        return self.decode(forward_rows(model, tokenizer, encoded, batch_size=batch_size), encoded, info)

    def format_prediction(self, record: dict[str, Any]) -> str:
        return format_record(record)

    def format_report(self, metrics: dict[str, Any], info: dict[str, Any]) -> str:
        """Accuracy, macro-F1 (naming its classes when the data lacks some) and the confusion matrix."""
        matrix, labels = metrics["confusion_matrix"], info["labels"]
        present = sum(1 for row in matrix if sum(row))
        covers = f"  (over the {present} class{'es' * (present != 1)} in the data, of {len(labels)})"
        return (
            f"accuracy  {metrics['accuracy']:.4f}\nmacro-F1  {metrics['macro_f1']:.4f}"
            + (covers if present < len(labels) else "")
            + "\n\n"
            + format_confusion_matrix(matrix, labels)
        )
