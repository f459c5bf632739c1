"""What a task tells the rest of loratune: its data, model, batches, loss, metrics and predictions.

The training loop, the evaluation loop and the commands know nothing of any one task. Each task
(``tasks/seq_cls.py`` ...) is one ``Task`` subclass; ``tasks.get_task(name)`` finds it. A task:

* loads its data (``load_data``: its records' schema, read by ``data.load``) and its model as
  ``auto_class``, a classifier with a fresh head (``load_model``);
* turns examples into token ids (``tokenize``) and padded batches (``collator``);
* gives the training loss of a batch (``loss``; by default the model's own ``outputs.loss``);
* scores predictions (``metrics()`` returns a fresh ``Metrics`` accumulator) and names the value
  that picks the best checkpoint (``metric``);
* shows predictions and evaluation reports (``predict``, ``format_prediction``, ``format_report``);
  a classifier's ``predict`` is ``encode`` -> forward -> ``decode``, which a server can split up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from loratune.data.options import DataOptions
from loratune.errors import LoratuneError
from loratune.models import head_module_names, load_pretrained_model


def refuse_tagging_options(options: DataOptions, task: str) -> None:
    """An error naming token-cls's own data option when it is set for ``task``."""
    if options.label_all_tokens:
        raise LoratuneError(f"--label-all-tokens is for --task token-cls (a tag per word); drop it for {task}")


@dataclass(frozen=True)
class Metric:
    """The evaluation value that picks the best checkpoint and drives early stopping."""

    name: str
    higher_is_better: bool = True

    def improves(self, record: dict[str, Any], best: dict[str, Any] | None) -> bool:
        """True for the first record, then for each one better than ``best``: a strictly better metric, or
        the same metric with a lower eval ``loss`` (a tie keeps the model that fits the data better, not the
        first one: a run whose F1 stays 0.0 still keeps its best-fitting weights)."""
        if best is None:
            return True
        new, old = record[self.name], best[self.name]
        if new == old:
            return _lower(record.get("loss"), best.get("loss"))
        return new > old if self.higher_is_better else new < old


def _lower(new: float | None, old: float | None) -> bool:
    """``new`` is a number below ``old`` (False where either is missing or NaN)."""
    return new is not None and old is not None and new < old


class Metrics(Protocol):
    """Accumulates one evaluation pass, batch by batch; ``merge`` adds another accumulator's batches
    (a distributed evaluation's shards, gathered on one rank)."""

    def update(self, outputs: Any, batch: dict[str, torch.Tensor]) -> None: ...

    def merge(self, other: Any) -> None: ...

    def compute(self) -> dict[str, Any]: ...


class TaskData(Protocol):
    """A task's splits (``datasets.Dataset``), where they came from, and which one chooses the best checkpoint.

    ``val`` (or None) chooses the best checkpoint and stops early; ``eval`` is then scored once at the
    end. Without ``val``, ``eval`` does both, and ``selection`` says so in words.
    """

    train: Any
    eval: Any
    val: Any
    source: str
    selection: str


@dataclass
class Encoded:
    """A batch of texts as model inputs: ``inputs[i]`` is text ``i``'s unpadded inputs (``input_ids`` and
    the like, lists of ints), or None when the text runs no forward; ``context[i]`` is what decoding it needs;
    ``max_length``: the truncation length the texts were encoded at."""

    texts: list[str]
    inputs: list[dict[str, list[int]] | None]
    context: list[Any]
    max_length: int | None = None


class Task(ABC):
    """One task family. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]  # the --task value, e.g. "seq-cls"
    peft_task_type: ClassVar[str]  # adapter_config.json's task_type, e.g. "SEQ_CLS"
    auto_class: ClassVar[str]  # the transformers class, e.g. "AutoModelForSequenceClassification"
    has_labels: ClassVar[bool] = True  # a classifier: its head has one output per label name
    metric: ClassVar[Metric]
    summary_metrics: ClassVar[tuple[str, ...]]  # the metrics the end-of-run summary shows
    # Per method ("lora", "full"): RunConfig values (field -> value) this task trains with when neither a
    # flag nor the recipe sets that field, e.g. {"lora": {"lr": 2e-3}}; train.config.build_config applies them.
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    @abstractmethod
    def load_data(self, options: DataOptions) -> TaskData:
        """The train and eval splits that ``options`` name (subsampled and split with ``options.seed``)."""

    def load_eval_data(self, options: DataOptions, info: dict[str, Any]) -> TaskData:
        """Data to evaluate a saved artifact on (``info``: its ``loratune.json``; ``options.for_eval`` is set and
        ``options.val_size`` is 0); by default ``load_data``."""
        return self.load_data(options)

    def load_model(
        self,
        name: str,
        info: dict[str, Any],
        *,
        trust_remote_code: bool = False,
        compute_dtype: torch.dtype = torch.float32,
        revision: str | None = None,
    ) -> nn.Module:
        """The pretrained model ``name`` (at the hub ``revision``) as ``auto_class``.

        ``info`` is ``artifact_info``'s record (for a training run, of its data; for a saved artifact, its
        ``loratune.json``): a classifier gets a head with one output per ``info["labels"]``.
        ``compute_dtype``: the run's compute dtype; a checkpoint stored in it loads as stored, else in fp32.
        """
        labels = info.get("labels") if self.has_labels else None
        return load_pretrained_model(
            self.auto_class,
            name,
            labels=labels,
            trust_remote_code=trust_remote_code,
            compute_dtype=compute_dtype,
            revision=revision,
        )

    def modules_to_save(self, model: nn.Module) -> list[str]:
        """Modules trained in full and saved with the adapter (PEFT's ``modules_to_save``): the new head."""
        return head_module_names(model)

    @abstractmethod
    def tokenize(self, split: Any, tokenizer: Any, max_length: int) -> Any:
        """Token ids (unpadded), ``labels`` and a ``length`` column for each example of ``split``."""

    @abstractmethod
    def collator(self, tokenizer: Any, *, max_length: int | None, pad_to_multiple_of: int | None) -> Callable:
        """Turns a list of tokenised examples into a padded batch of tensors."""

    @abstractmethod
    def metrics(self, data: TaskData) -> Metrics:
        """A fresh accumulator for one evaluation pass over ``data.eval``."""

    @abstractmethod
    def artifact_info(self, data: TaskData) -> dict[str, Any]:
        """What ``loratune.json`` must hold to use the trained model again (e.g. label names)."""

    @abstractmethod
    def predict(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], info: dict[str, Any], **kw: Any) -> list:
        """One JSON-ready prediction record per text."""

    def encode(self, texts: Sequence[str], tokenizer: Any, info: dict[str, Any], *, max_length: int) -> Encoded:
        """``texts`` as unpadded model inputs plus what ``decode`` needs (classifier tasks only)."""
        raise NotImplementedError(f"task {self.name} has no encode/decode; use predict")

    def decode(self, logits_rows: Sequence[torch.Tensor | None], encoded: Encoded, info: dict[str, Any]) -> list:
        """``predict``'s records from each text's logits row (its own tokens only; None where it ran none)."""
        raise NotImplementedError(f"task {self.name} has no encode/decode; use predict")

    @abstractmethod
    def format_prediction(self, record: dict[str, Any]) -> str:
        """One prediction as a line of text."""

    @abstractmethod
    def format_report(self, metrics: dict[str, Any], info: dict[str, Any]) -> str:
        """An evaluation's metrics as text (``loratune eval``)."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch: the model's own."""
        return model(**batch).loss

    def learned_nothing(self, evals: Sequence[dict[str, Any]]) -> str | None:
        """One line saying that the run's evaluations show nothing learned, with what to try; None when they
        show learning (by default a task never says so)."""
        return None


@torch.no_grad()
def forward_rows(
    model: nn.Module,
    tokenizer: Any,
    encoded: Encoded,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> list[torch.Tensor | None]:
    """Each encoded text's float logits (its own tokens, padding cut off), in eval mode, ``batch_size`` at a
    time; the inputs go to ``device`` (default: the model's)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor | None] = [None] * len(encoded.inputs)
    ran = [i for i, x in enumerate(encoded.inputs) if x is not None]
    try:
        for lo in range(0, len(ran), batch_size):
            chunk = ran[lo : lo + batch_size]
            batch = tokenizer.pad([encoded.inputs[i] for i in chunk], padding=True, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            for row, i in enumerate(chunk):
                rows[i] = unpad_row(logits[row], batch["attention_mask"][row], tokenizer.padding_side)
    finally:
        model.train(was_training)
    return rows


def unpad_row(logits: torch.Tensor, mask: torch.Tensor, side: str = "right") -> torch.Tensor:
    """One row of logits without its padding (a per-text row, 1-D, is returned as it is)."""
    if logits.dim() < 2:
        return logits
    n = int(mask.sum())
    return logits[-n:] if side == "left" and n else logits[:n]
