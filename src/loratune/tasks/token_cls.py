"""Token classification (NER): a tag per word. Word-piece alignment, entity-level scoring with seqeval
(precision, recall and F1 in the CoNLL sense, micro overall and per entity type), and predictions as
entities with their exact character spans in the input text.

Words reach the model through the fast tokenizer with ``is_split_into_words=True``: the first sub-token
of each word carries the word's tag, the others -100 (with ``label_all_tokens`` in training: the
inside form of the tag, B-PER -> I-PER). A word's prediction is the one at its first sub-token.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from seqeval.metrics import classification_report
from seqeval.metrics.sequence_labeling import get_entities
from torch import nn
from transformers import DataCollatorForTokenClassification

from loratune.data.batching import MODEL_INPUTS, dataset_fingerprint
from loratune.data.options import DataOptions
from loratune.data.tagging import UNTRAINED, TaggingData, is_iob, load_tagged_words
from loratune.errors import DataError, LoratuneError
from loratune.tasks.base import Encoded, Metric, Task, forward_rows

log = logging.getLogger(__name__)

TASK_TYPE = "TOKEN_CLS"  # PEFT's task_type in adapter_config.json
AUTO_CLASS = "AutoModelForTokenClassification"
# CJK ideographs, the ranges BERT's tokenizer splits per character: those scripts put no spaces between words.
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ceaf\U0002f800-\U0002fa1f"
_LETTER, _INNER = rf"[^\W_{CJK}]", rf"[^\W{CJK}\u0300-\u036f]|[\u0300-\u036f]"
# A word: one CJK ideograph; or letters/digits (with combining marks) joined by inner hyphens or apostrophes;
# or one other non-space character (punctuation) on its own.
WORD = re.compile(
    rf"[{CJK}]|{_LETTER}(?:{_INNER})*(?:[-'\u2019]{_LETTER}(?:{_INNER})*)*|[^\s]",
    re.UNICODE,
)


# ---------------------------------------------------------------------------------------------------
# words and word pieces


def split_words(text: str) -> list[tuple[str, int, int]]:
    """The words of raw ``text`` with their character spans ``[start, end)``: ``text[start:end] == word``.

    Punctuation is a word of its own ("Apple,Inc." -> Apple , Inc .); hyphens and apostrophes inside a
    word keep it whole ("Jean-Luc", "O'Neil"). Unicode letters count as letters ("São", "Müller").
    """
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def align_labels(word_ids: Sequence[int | None], tags: Sequence[int], inner: Sequence[int] | None = None) -> list[int]:
    """The label of each sub-token: its word's tag at the word's first sub-token; at the word's later
    sub-tokens -100, or with ``inner`` that word's ``inner`` id; -100 at special tokens."""
    out: list[int] = []
    previous: int | None = None
    for w in word_ids:
        if w is None:
            out.append(UNTRAINED)
        elif w != previous:
            out.append(int(tags[w]))
        else:
            out.append(int(inner[w]) if inner is not None else UNTRAINED)
        previous = w
    return out


def _check_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise LoratuneError(
            f"token-cls needs a fast tokenizer (one with word_ids), and {type(tokenizer).__name__} is not; "
            "use a model with a tokenizer.json"
        )


def _encode_words(tokenizer: Any, words: list[list[str]], max_length: int, **kw: Any) -> Any:
    """The tokenizer on pre-split words; a tokenizer that cannot take them is one clear error."""
    _check_fast(tokenizer)
    try:
        return tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, **kw)
    except ValueError as err:  # e.g. RoBERTa/GPT-2 tokenizers without add_prefix_space=True
        raise LoratuneError(
            f"the tokenizer cannot take words split in advance ({str(err).splitlines()[0]}); "
            "use a model whose tokenizer can (BERT-style, or add_prefix_space=True)"
        ) from None


def tokenize_words(ds: Any, tokenizer: Any, max_length: int, *, batch_size: int = 1000) -> Any:
    """Token ids (unpadded), ``labels`` aligned to the sub-tokens and ``length``, for a split of
    ``tokens``/``tags`` (and, for label-all-tokens training, ``inner_tags``). Words cut off at
    ``max_length`` are counted, and one warning says how many."""
    if max_length < 1:
        raise DataError(f"max_length must be >= 1, got {max_length}; pass e.g. --max-length 256.")
    inner_column = "inner_tags" if "inner_tags" in ds.column_names else None
    lost = {"words": 0, "sentences": 0}

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        enc = _encode_words(tokenizer, batch["tokens"], max_length)
        out: dict[str, list[Any]] = {key: enc[key] for key in MODEL_INPUTS if key in enc}
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        labels = []
        for i, tags in enumerate(batch["tags"]):
            word_ids = enc.word_ids(i)
            inner = batch[inner_column][i] if inner_column else None
            labels.append(align_labels(word_ids, tags, inner))
            missing = len(tags) - len({w for w in word_ids if w is not None})
            if missing:
                lost["words"] += missing
                lost["sentences"] += 1
        out["labels"] = labels
        return out

    tokens = ds.map(
        encode,
        batched=True,
        batch_size=batch_size,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=dataset_fingerprint(ds, tokenizer, max_length, "tokens/tags"),
        desc="Tokenising",
    )
    if lost["words"]:
        log.warning(
            "%d words in %d of %d sentences lie past --max-length %d (or have no tokens) and are left "
            "out of training and scoring; raise --max-length to keep them",
            lost["words"],
            lost["sentences"],
            len(ds),
            max_length,
        )
    return tokens


class TokenCollator:
    """Pads each batch to its longest sequence (labels with -100); ``length`` and other keys are dropped."""

    def __init__(self, tokenizer: Any, *, max_length: int | None = None, pad_to_multiple_of: int | None = None):
        if tokenizer.pad_token is None:
            raise DataError("the tokenizer has no pad token; set tokenizer.pad_token.")
        self._collator = DataCollatorForTokenClassification(
            tokenizer,
            padding="max_length" if max_length else "longest",
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            label_pad_token_id=UNTRAINED,
            return_tensors="pt",
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keep = (*MODEL_INPUTS, "labels")
        batch = dict(self._collator([{k: v for k, v in f.items() if k in keep} for f in features]))
        batch["labels"] = batch["labels"].long()
        return batch


# ---------------------------------------------------------------------------------------------------
# scoring


def _scored(tags: list[str]) -> list[str]:
    """Tags as seqeval's default mode reads them: a plain tag (``PER``) is an inside tag (``I-PER``)."""
    return [t if t == "O" or (len(t) > 1 and t[1] == "-") else f"I-{t}" for t in tags]


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (micro over all entities, the CoNLL score) and per type,
    with seqeval's default (conlleval) mode.

    Returns ``{"f1", "precision", "recall", "entities" (gold count), "per_type": {type: {"precision",
    "recall", "f1", "support"}}}``.
    """
    if len(y_true) != len(y_pred) or any(len(a) != len(b) for a, b in zip(y_true, y_pred, strict=False)):
        raise DataError("predictions and tags differ in length; pass one predicted tag per word.")
    true = [_scored(list(s)) for s in y_true]
    pred = [_scored(list(s)) for s in y_pred]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns of undefined scores and of unusual tags
        report = classification_report(true, pred, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {})
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in report.items()
        if not name.endswith(" avg")
    }
    return {
        "f1": float(micro.get("f1-score", 0.0)),
        "precision": float(micro.get("precision", 0.0)),
        "recall": float(micro.get("recall", 0.0)),
        "entities": int(micro.get("support", 0)),
        "per_type": per_type,
    }


class EntityMetrics:
    """Word-level gold and predicted tags (at each word's first sub-token) and the mean loss per labelled
    sub-token of one evaluation pass; ``compute`` scores the entities."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.true: list[list[str]] = []
        self.pred: list[list[str]] = []
        self.loss_sum, self.count = 0.0, 0

    def update(self, outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        labels = batch["labels"].cpu()
        preds = outputs.logits.argmax(dim=-1).cpu()
        mask = labels != UNTRAINED
        for row_labels, row_preds, row_mask in zip(labels, preds, mask, strict=True):
            self.true.append([self.labels[i] for i in row_labels[row_mask].tolist()])
            self.pred.append([self.labels[i] for i in row_preds[row_mask].tolist()])
        n = int(mask.sum())
        if outputs.loss is not None and n:
            self.loss_sum += float(outputs.loss) * n
            self.count += n

    def merge(self, other: EntityMetrics) -> None:
        self.true += other.true
        self.pred += other.pred
        self.loss_sum += other.loss_sum
        self.count += other.count

    def compute(self) -> dict[str, Any]:
        if not self.true:
            raise DataError("no sentences to score; pass a non-empty eval set.")
        metrics = entity_scores(self.true, self.pred)
        metrics["loss"] = self.loss_sum / max(self.count, 1)
        metrics["num_examples"] = len(self.true)
        metrics["num_words"] = sum(len(s) for s in self.true)
        return metrics


def format_entity_report(metrics: dict[str, Any]) -> str:
    """Entity F1, precision, recall and loss; then a table per entity type with the micro total."""
    head = (
        f"entity F1  {metrics['f1']:.4f}  (precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}; "
        f"micro over {metrics.get('entities', 0)} entities, CoNLL scoring with seqeval)\n"
        f"loss       {metrics.get('loss', float('nan')):.4f}"
    )
    rows = [(name, v) for name, v in sorted(metrics.get("per_type", {}).items())]
    total = {
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "f1": metrics["f1"],
        "support": metrics.get("entities", 0),
    }
    width = max(5, *(len(name) for name, _ in rows)) if rows else 5
    lines = [f"{'type'.ljust(width)}  precision  recall      F1  support"]
    for name, v in [*rows, ("micro", total)]:
        lines.append(
            f"{name.ljust(width)}  {v['precision']:9.4f}  {v['recall']:6.4f}  {v['f1']:6.4f}  {v['support']:7d}"
        )
    return head + "\n\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# predictions


def entity_spans(
    text: str, spans: Sequence[tuple[int, int]], tags: Sequence[str], confidences: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """The entities that word ``tags`` mark, each ``{"type", "text", "start", "end", "confidence"}`` with
    ``text == text[start:end]``: from the first word's start to the last word's end in the input text.
    ``confidence``: the mean of the entity's words' ``confidences`` (None without them)."""
    if len(spans) != len(tags):
        raise DataError(f"{len(tags)} tags for {len(spans)} words; pass one tag per word.")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = get_entities(_scored(list(tags)))
    for kind, first, last in found:
        start, end = spans[first][0], spans[last][1]
        conf = float(np.mean(confidences[first : last + 1])) if confidences is not None else None
        out.append({"type": kind, "text": text[start:end], "start": start, "end": end, "confidence": conf})
    return out


def encode_texts(texts: Sequence[str], tokenizer: Any, *, max_length: int) -> Encoded:
    """Each raw text's words as unpadded token ids; its context: ``(word spans, word_ids)`` (no inputs and
    no word ids for a text without words)."""
    texts = [str(t) for t in texts]
    words = [split_words(t) for t in texts]
    nonempty = [i for i, w in enumerate(words) if w]
    inputs: list[dict[str, list[int]] | None] = [None] * len(texts)
    context: list[Any] = [([(s, e) for _, s, e in w], None) for w in words]
    if nonempty:
        enc = _encode_words(tokenizer, [[w for w, _, _ in words[i]] for i in nonempty], max_length)
        for row, i in enumerate(nonempty):
            inputs[i] = {k: enc[k][row] for k in MODEL_INPUTS if k in enc}
            context[i] = (context[i][0], enc.word_ids(row))
    return Encoded(texts, inputs, context, max_length)


def decode_text(
    text: str, logits: torch.Tensor | None, context: Any, labels: Sequence[str], max_length: int | None = None
) -> tuple[dict, bool]:
    """One text's ``{"text", "entities"}`` record from its tokens' logits (tags at each word's first
    sub-token), and whether it was cut at ``max_length``: its tokens fill it and some words got none (a
    word of zero-width characters alone has no token, in a text that was not cut)."""
    spans, word_ids = context
    tags, confs = ["O"] * len(spans), [1.0] * len(spans)
    seen: set[int] = set()
    if logits is not None:
        probs = torch.softmax(logits.float(), dim=-1)
        for pos, w in enumerate(word_ids):
            if w is None or w in seen:
                continue
            seen.add(w)
            p, best = probs[pos].max(dim=-1)
            tags[w], confs[w] = labels[int(best)], float(p)
    record = {"text": text, "entities": entity_spans(text, spans, tags, confs)}
    if logits is None or len(spans) == len(seen):
        return record, False
    return record, max_length is None or len(word_ids) >= max_length


def decode_texts(logits_rows: Sequence[torch.Tensor | None], encoded: Encoded, labels: Sequence[str]) -> list:
    """``decode_text`` for each encoded text; one warning counts the texts cut at ``max_length``."""
    records, cut = [], 0
    for text, row, context in zip(encoded.texts, logits_rows, encoded.context, strict=True):
        record, was_cut = decode_text(text, row, context, labels, encoded.max_length)
        records.append(record)
        cut += was_cut
    if cut:
        log.warning(
            "%d text(s) run past --max-length %s tokens; their later words are tagged O", cut, encoded.max_length
        )
    return records


def predict_entities(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """``{"text", "entities": [...]}`` per raw text (see :func:`entity_spans`), in eval mode, batch by batch.

    Words past ``max_length`` tokens get no tag (O), with a warning.
    """
    encoded = encode_texts(texts, tokenizer, max_length=max_length)
    return decode_texts(forward_rows(model, tokenizer, encoded, batch_size=batch_size), encoded, labels)


def format_entities(record: dict[str, Any], *, max_text: int = 60) -> str:
    """One line: ``PER "Angela Merkel" [0:13] 0.98; LOC "Paris" [22:27] 0.95  "the text..."``."""
    found = "; ".join(
        f'{e["type"]} "{e["text"]}" [{e["start"]}:{e["end"]}] {e["confidence"]:.2f}' for e in record["entities"]
    )
    snippet = " ".join(str(record["text"]).split())
    if len(snippet) > max_text:
        snippet = snippet[: max_text - 3].rstrip() + "..."
    return f'{found or "(no entities)"}  "{snippet}"'


# ---------------------------------------------------------------------------------------------------
# the task


class TokenClsTask(Task):
    """Token classification (``AutoModelForTokenClassification``); the best run has the top entity F1."""

    name = "token-cls"
    peft_task_type = TASK_TYPE
    auto_class = AUTO_CLASS
    metric = Metric("f1")
    summary_metrics = ("f1", "precision", "recall")
    # Chosen on four NER sets (benchmarks/README.md, "Token classification on other NER sets"): LoRA on every
    # linear layer of the encoder (query, key, value, dense) at r=16 and lr 1e-3 learns on all four over the
    # default 3 epochs, where 2e-3 finds no entity on WNUT-17; full fine-tuning at 1e-4.
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "lora": {"lr": 1e-3, "r": 16, "target_modules": "all-linear"},
        "full": {"lr": 1e-4},
    }

    def learned_nothing(self, evals: Sequence[dict[str, Any]]) -> str | None:
        """Every evaluation's entity F1 was 0.0: the model tagged no entity correctly."""
        if not evals or any(e.get("f1", 0.0) > 0.0 for e in evals):
            return None
        return (
            f"every evaluation's entity F1 was 0.0 ({len(evals)} evaluations): the model found no entity; "
            "try a lower rate over more epochs (--lr 5e-4 --epochs 3), or --method full, and check that the "
            "tags mark entities (B-X/I-X)"
        )

    def load_data(self, options: DataOptions) -> TaggingData:
        return load_tagged_words(options)

    def load_eval_data(self, options: DataOptions, info: dict[str, Any]) -> TaggingData:
        """Data to evaluate an artifact on, with its tag list (``info["labels"]``).
        Scoring is at each word's first sub-token, whatever ``label_all_tokens`` the artifact trained with."""
        options = options.replace(label_all_tokens=False)
        if options.eval_file:  # the eval file alone: no need to read the train file
            options = options.replace(train_file=options.eval_file)
        return load_tagged_words(options, list(info["labels"]))

    def tokenize(self, split: Any, tokenizer: Any, max_length: int) -> Any:
        return tokenize_words(split, tokenizer, max_length)

    def collator(self, tokenizer: Any, *, max_length: int | None, pad_to_multiple_of: int | None) -> Callable:
        return TokenCollator(tokenizer, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of)

    def metrics(self, data: TaggingData) -> EntityMetrics:
        return EntityMetrics(data.labels)

    def artifact_info(self, data: TaggingData) -> dict[str, Any]:
        return {"labels": data.labels, "label_all_tokens": data.label_all_tokens}

    def encode(self, texts: Sequence[str], tokenizer: Any, info: dict[str, Any], *, max_length: int) -> Encoded:
        return encode_texts(texts, tokenizer, max_length=max_length)

    def decode(self, logits_rows: Sequence[torch.Tensor | None], encoded: Encoded, info: dict[str, Any]) -> list:
        return decode_texts(logits_rows, encoded, info["labels"])

    def predict(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], info: dict[str, Any], **kw: Any) -> list:
        return predict_entities(model, tokenizer, texts, info["labels"], **kw)

    def format_prediction(self, record: dict[str, Any]) -> str:
        return format_entities(record)

    def format_report(self, metrics: dict[str, Any], info: dict[str, Any]) -> str:
        return format_entity_report(metrics)


__all__ = [
    "TokenClsTask",
    "align_labels",
    "entity_scores",
    "entity_spans",
    "format_entities",
    "format_entity_report",
    "is_iob",
    "predict_entities",
    "split_words",
    "tokenize_words",
]
