"""Causal language modelling: plain text (packed blocks) or instructions (loss on the response only).

Scored by the mean next-token loss over the tokens that carry loss, weighted by tokens (not averaged
per batch), and its perplexity ``exp(loss)``; the best checkpoint has the lowest perplexity. A
prediction is the model's completion of a text (greedy), formatted as training formatted instructions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from loratune.data.lm import (
    IGNORE,
    PLAIN,
    TEXT,
    LMCollator,
    LMData,
    load_lm_records,
    pack_texts,
    prompt_format_of,
    tokenize_instructions,
)
from loratune.data.options import DataOptions
from loratune.generate import DEFAULT_NEW_TOKENS, GenerationOptions, complete, positions, prompt_format
from loratune.tasks.base import Metric, Task, refuse_tagging_options

TASK_TYPE = "CAUSAL_LM"
AUTO_CLASS = "AutoModelForCausalLM"


class TokenLossMetrics:
    """The loss summed over the tokens that carry it (``outputs.loss`` is their mean in each batch)."""

    def __init__(self) -> None:
        self.loss_sum, self.tokens = 0.0, 0

    def update(self, outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        n = int((batch["labels"][:, 1:] != IGNORE).sum())  # the model predicts labels[:, 1:]
        if n:
            self.loss_sum += float(outputs.loss) * n
            self.tokens += n

    def merge(self, other: TokenLossMetrics) -> None:
        self.loss_sum += other.loss_sum
        self.tokens += other.tokens

    def compute(self) -> dict[str, Any]:
        loss = self.loss_sum / self.tokens if self.tokens else float("nan")
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": self.tokens}


class CausalLMTask(Task):
    """``AutoModelForCausalLM`` with LoRA; no new head (the LM head is pretrained, or tied to the embeddings)."""

    name = "causal-lm"
    peft_task_type = TASK_TYPE
    auto_class = AUTO_CLASS
    has_labels = False
    metric = Metric("perplexity", higher_is_better=False)
    summary_metrics = ("perplexity", "loss")

    def __init__(self) -> None:
        self.prompt_format: str | None = None  # set by tokenize: how the instructions were shown

    def load_data(self, options: DataOptions) -> LMData:
        refuse_tagging_options(options, self.name)
        return load_lm_records(options)

    def modules_to_save(self, model: nn.Module) -> list[str]:
        return []

    def tokenize(self, split: Any, tokenizer: Any, max_length: int) -> Any:
        if "text" in split.column_names:
            self.prompt_format = PLAIN
            return pack_texts(split, tokenizer, max_length)
        self.prompt_format = prompt_format_of(tokenizer)
        return tokenize_instructions(split, tokenizer, max_length, self.prompt_format)

    def collator(self, tokenizer: Any, *, max_length: int | None, pad_to_multiple_of: int | None) -> Callable:
        return LMCollator(tokenizer, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of)

    def metrics(self, data: LMData) -> TokenLossMetrics:
        return TokenLossMetrics()

    def artifact_info(self, data: LMData) -> dict[str, Any]:
        fmt = self.prompt_format or (PLAIN if data.kind == TEXT else None)
        return {"data_format": data.kind, "prompt_format": fmt}

    def predict(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], info: dict[str, Any], **kw: Any) -> list:
        """Each text's greedy completion (``DEFAULT_NEW_TOKENS`` at most); a prompt longer than ``max_length``
        keeps its last tokens."""
        fmt = prompt_format(info, tokenizer)
        options = GenerationOptions(max_new_tokens=kw.get("max_new_tokens", DEFAULT_NEW_TOKENS))
        limit = kw.get("max_length") or positions(model) or 1024
        return [
            {"text": text, "completion": complete(model, tokenizer, text, fmt, options, max_prompt=limit)}
            for text in texts
        ]

    def format_prediction(self, record: dict[str, Any]) -> str:
        snippet = " ".join(str(record["text"]).split())
        snippet = snippet if len(snippet) <= 60 else snippet[:57].rstrip() + "..."
        return f'"{snippet}" -> {" ".join(str(record["completion"]).split())}'

    def format_report(self, metrics: dict[str, Any], info: dict[str, Any]) -> str:
        return (
            f"loss        {metrics['loss']:.4f}  (mean next-token loss over {metrics['tokens']} tokens)\n"
            f"perplexity  {metrics['perplexity']:.4f}"
        )
