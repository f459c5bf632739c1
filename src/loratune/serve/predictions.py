"""Predictions and completions of loaded adapters on the shared trunk.

A mixed batch runs the shared trunk once per task family with per-row LoRA routing
(``lora.mixed_adapters``): each item is encoded by its adapter's task (``Task.encode``), the family's
inputs are padded together, each adapter's head runs on its own rows of the shared output, and each row
is decoded by its task (``Task.decode``) into the record ``predict`` gives. Causal-LM items generate
one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loratune.data.lm import encode_messages, encode_prompt
from loratune.errors import LoratuneError
from loratune.generate import GenerationOptions, generate_ids, keep_last, positions, prompt_format, stopped_at_eos
from loratune.lora.model import mixed_adapters
from loratune.serve.assembly import Entry
from loratune.tasks.base import Encoded, unpad_row

Forward = Callable[[dict[str, torch.Tensor], list[str]], Any]  # (padded batch, adapter per row) -> trunk outputs


@dataclass(frozen=True)
class Completion:
    """A causal-lm adapter's answer: its text, the prompt and answer token counts, and why it stopped
    (``"stop"``: an end-of-sequence token; ``"length"``: ``max_new_tokens`` or the context ran out)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def trunk_forward(trunk: nn.Module, batch: dict[str, torch.Tensor], names: list[str]) -> Any:
    """The shared trunk once over the padded ``batch``, row ``i`` through adapter ``names[i]``."""
    if not names:
        return None
    with mixed_adapters(trunk, names):
        return trunk(**batch)


class Predictor:
    """Predictions of loaded entries on the shared ``trunk`` (``forward``: how the trunk runs a batch)."""

    def __init__(self, trunk: nn.Module, device: torch.device, forward: Forward) -> None:
        self.trunk, self.device, self.forward = trunk, device, forward

    def predict(
        self, items: Sequence[tuple[str, str]], entries: dict[str, Entry], batch_size: int, kw: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """One record per ``(adapter name, text)`` in input order; one trunk forward per task family (per
        ``batch_size`` items of it)."""
        out: list[dict[str, Any] | None] = [None] * len(items)
        families: dict[str, list[int]] = {}
        for i, (n, _) in enumerate(items):
            families.setdefault(entries[n].task.name, []).append(i)
        for family in families.values():
            for lo in range(0, len(family), batch_size):
                rows = family[lo : lo + batch_size]
                for i, record in zip(rows, self._family(items, rows, entries, kw), strict=True):
                    out[i] = record
        return out  # type: ignore[return-value]

    def complete(
        self,
        e: Entry,
        prompt: str | None,
        messages: Sequence[dict[str, str]] | None,
        options: GenerationOptions,
        raw: bool,
        stream: Any,
    ) -> Completion:
        """Causal-lm entry ``e``'s answer to ``prompt`` or to the chat ``messages`` (see ``Runtime.complete``)."""
        if e.task.has_labels:
            raise LoratuneError(
                f"adapter {e.name!r} is a {e.task.name} adapter; completions need a causal-lm one (use /v1/predict)"
            )
        fmt = prompt_format(e.info, e.tokenizer, raw=raw)
        if messages is not None:
            ids = encode_messages(e.tokenizer, fmt, messages)
        else:
            ids = encode_prompt(e.tokenizer, fmt, [(prompt or "", None)])
        context = positions(e.model) or 2048
        ids = keep_last(ids, context - min(options.max_new_tokens, context // 2))
        with mixed_adapters(self.trunk, [e.name]):
            new = generate_ids(e.model, e.tokenizer, ids, options, stream=stream, stream_end="")
        text = e.tokenizer.decode(new, skip_special_tokens=True)
        reason = "stop" if stopped_at_eos(e.model, e.tokenizer, new) else "length"
        return Completion(text, len(ids), len(new), reason)

    @torch.no_grad()
    def _family(
        self, items: Sequence[tuple[str, str]], rows: list[int], entries: dict[str, Entry], kw: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Records for ``rows`` of one task family: encode each item with its task, run the trunk once over
        them all, each adapter's head on its own rows, and decode each row with its task."""
        first = entries[items[rows[0]][0]]
        if not first.task.has_labels:  # causal-lm: generation runs the trunk per token; per item then
            return [self._one(entries[items[i][0]], items[i][1], kw) for i in rows]
        encoded = [_encode(entries[items[i][0]], items[i][1], kw) for i in rows]
        ran = [j for j, x in enumerate(encoded) if x.inputs[0] is not None]
        inputs = [_as_tensors(encoded[j].inputs[0], self.device) for j in ran]
        names = [items[rows[j]][0] for j in ran]
        batch = _pad(inputs, first.tokenizer) if inputs else {}
        outputs = self.forward(batch, names)
        logits = self._heads(outputs, batch, names, entries)
        found = dict(zip(ran, logits, strict=True))
        return [_decode(entries[items[i][0]], found.get(j), encoded[j]) for j, i in enumerate(rows)]

    def _heads(
        self, outputs: Any, batch: dict[str, torch.Tensor], names: list[str], entries: dict[str, Entry]
    ) -> list[torch.Tensor]:
        """Each row's logits from its adapter's head, one head call per adapter, padding cut off."""
        logits: list[torch.Tensor | None] = [None] * len(names)
        for name in dict.fromkeys(names):
            index = torch.tensor([k for k, n in enumerate(names) if n == name], device=self.device)
            rows = _head_logits(entries[name], _rows_of(outputs, index), {k: v[index] for k, v in batch.items()})
            for k, row in zip(index.tolist(), rows, strict=True):
                logits[k] = unpad_row(row, batch["attention_mask"][k])
        return logits  # type: ignore[return-value]

    def _one(self, e: Entry, text: str, kw: dict[str, Any]) -> dict[str, Any]:
        """One record from ``e``'s model alone (its rows routed through its adapter), at the adapter's
        ``max_length`` unless ``kw`` says otherwise."""
        options = {"max_length": e.info.get("max_length") or 256, **kw}
        with mixed_adapters(self.trunk, [e.name]):
            return e.task.predict(e.model, e.tokenizer, [text], _task_info(e), **options)[0]


class _Given(nn.Module):
    """Stands for the trunk in one head call: returns the trunk outputs it was given (the shared forward's
    rows of one adapter), so the task model's own head code runs on them."""

    def __init__(self, outputs: Any) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, *args: Any, **kw: Any) -> Any:
        return self.outputs


def _rows_of(outputs: Any, index: torch.Tensor) -> Any:
    """The rows ``index`` of a trunk's batched outputs (its tensor fields only)."""
    fields = {k: v[index] for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    return type(outputs)(**fields)


def _head_logits(e: Entry, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``e``'s task model's head on the given trunk ``outputs`` of ``batch``'s rows: float logits on the CPU."""
    prefix = e.model.base_model_prefix
    trunk = getattr(e.model, prefix)
    setattr(e.model, prefix, _Given(outputs))
    try:
        return e.model(**batch).logits.float().cpu()
    finally:
        setattr(e.model, prefix, trunk)


def _task_info(e: Entry) -> dict[str, Any]:
    """``e``'s ``loratune.json`` record as its task reads it (labels only for a classifier)."""
    return {**e.info, "labels": e.info.get("labels") if e.task.has_labels else None}


def _encode(e: Entry, text: str, kw: dict[str, Any]) -> Encoded:
    """``e``'s task encoding of one text, at the adapter's ``max_length`` unless ``kw`` says otherwise."""
    max_length = kw.get("max_length") or e.info.get("max_length") or 256
    return e.task.encode([text], e.tokenizer, _task_info(e), max_length=max_length)


def _decode(e: Entry, logits: torch.Tensor | None, encoded: Encoded) -> dict[str, Any]:
    """``e``'s task record of one encoded text from its logits row."""
    return e.task.decode([logits], encoded, _task_info(e))[0]


def _as_tensors(inputs: dict[str, list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    """One text's encoded inputs as a batch of one row on ``device``."""
    return {k: torch.tensor([v], device=device) for k, v in inputs.items()}


def _pad(inputs: list[dict[str, torch.Tensor]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """One batch from single-row inputs, padded on the right whatever the tokenizer's side: ids with the pad
    id, masks and type ids with 0. A token's output then does not depend on the padding (positions start
    at 0 in every row, and a causal model never looks ahead)."""
    length = max(x["input_ids"].shape[1] for x in inputs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {}
    for key in inputs[0]:
        rows = []
        for x in inputs:
            t = x[key]
            fill = t.new_full((1, length - t.shape[1]), pad_id if key == "input_ids" else 0)
            rows.append(torch.cat([t, fill], dim=1))
        batch[key] = torch.cat(rows)
    return batch
