"""Text generation with a causal LM: the prompt formatted as training formatted instructions, left-truncated
to the context, tokens streamed as they come; greedy at temperature 0, else seeded sampling.

``loratune generate`` and ``loratune predict`` (causal-lm) use it; ``chat`` is ``generate --chat``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import nn

from loratune.data.lm import CHAT_TEMPLATE, PLAIN, PROMPT_FORMATS, encode_prompt
from loratune.errors import LoratuneError

DEFAULT_NEW_TOKENS = 128
MAX_SEED = 2**64 - 1  # torch.manual_seed's largest
GREEDY_BELOW = 1e-4  # a smaller temperature is greedy, the limit it tends to (logits / T would overflow)
EXIT = "/exit"


@dataclass(frozen=True)
class GenerationOptions:
    """How to pick tokens: ``temperature`` 0 (or below ``GREEDY_BELOW``) is greedy; above it, sampling from
    the top-``top_p`` nucleus, seeded with ``seed`` (the same seed, options and prompt give the same text)."""

    max_new_tokens: int = DEFAULT_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> GenerationOptions:
        """Raise ``LoratuneError`` naming the flag for an out-of-range value."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise LoratuneError(f"--max-new-tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not 0 <= self.temperature < math.inf:  # also NaN
            raise LoratuneError(f"--temperature must be >= 0 and finite (0: greedy), got {self.temperature:g}")
        if not 0 < self.top_p <= 1:
            raise LoratuneError(f"--top-p must be in (0, 1], got {self.top_p:g}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise LoratuneError(f"--seed must be in [0, {MAX_SEED}] (2**64 - 1), got {self.seed}")
        return self


def prompt_format(info: dict[str, Any], tokenizer: Any, raw: bool = False) -> str:
    """The artifact's ``prompt_format`` (``loratune.json``); for a base model or an adapter that does not
    record one, the chat template when the tokenizer has one, else plain text. ``raw``: plain text."""
    if raw:
        return PLAIN
    recorded = info.get("prompt_format")
    if recorded in PROMPT_FORMATS:
        return recorded
    return CHAT_TEMPLATE if getattr(tokenizer, "chat_template", None) else PLAIN


def positions(model: nn.Module) -> int | None:
    """The number of positions the model has (``max_position_embeddings`` or GPT-2's ``n_positions``)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def keep_last(ids: list[int], limit: int, what: str = "the prompt") -> list[int]:
    """``ids``, or its last ``limit`` tokens when it is longer (with a one-line warning on stderr)."""
    limit = max(1, limit)
    if len(ids) <= limit:
        return ids
    print(
        f"warning: {what} has {len(ids)} tokens, more than the context's {limit}; its first "
        f"{len(ids) - limit} are dropped",
        file=sys.stderr,
        flush=True,
    )
    return ids[-limit:]


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for v in value if isinstance(value, list) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def generate(
    model: nn.Module, tokenizer: Any, ids: list[int], options: GenerationOptions, *, stream: TextIO | None = None
) -> str:
    """The text the model adds after the prompt ``ids`` (at most ``options.max_new_tokens`` tokens, fewer when
    the model's positions run out, stopping at EOS); with ``stream``, written there token by token as well."""
    new = generate_ids(model, tokenizer, ids, options, stream=stream)
    return tokenizer.decode(new, skip_special_tokens=True)


def stopped_at_eos(model: nn.Module, tokenizer: Any, new_ids: list[int]) -> bool:
    """Whether generated ``new_ids`` ended at an end-of-sequence token (else at the token limit)."""
    return bool(new_ids) and new_ids[-1] in _eos_ids(model, tokenizer)


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    tokenizer: Any,
    ids: list[int],
    options: GenerationOptions,
    *,
    stream: TextIO | None = None,
    stream_end: str = "\n",
) -> list[int]:
    """``generate``'s new token ids (its EOS token included when it stopped there); ``stream_end`` is
    written to ``stream`` after the last token."""
    from transformers import GenerationConfig

    limit = positions(model)
    new = options.max_new_tokens if limit is None else max(1, min(options.max_new_tokens, limit - len(ids)))
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    sample = options.temperature >= GREEDY_BELOW
    config = GenerationConfig(
        max_new_tokens=new,
        do_sample=sample,
        eos_token_id=eos or None,
        pad_token_id=pad,
        **({"temperature": options.temperature, "top_p": options.top_p, "top_k": 0} if sample else {}),
    )
    streamer = _Streamer(tokenizer, stream, stream_end) if stream is not None else None
    device = next(model.parameters()).device
    inputs = torch.tensor([ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        if sample and options.seed is not None:
            torch.manual_seed(options.seed)
        out = model.generate(
            inputs, attention_mask=torch.ones_like(inputs), generation_config=config, streamer=streamer
        )
    finally:
        model.train(was_training)
    return out[0, len(ids) :].tolist()


class _Streamer:
    """transformers' ``TextStreamer`` (skip the prompt and special tokens), writing to ``out`` and ``end``
    after the last token."""

    def __new__(cls, tokenizer: Any, out: TextIO, end: str = "\n"):
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                out.write(text + (end if stream_end else ""))
                out.flush()

        return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def complete(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    fmt: str,
    options: GenerationOptions,
    *,
    max_prompt: int,
    stream: TextIO | None = None,
) -> str:
    """The model's answer to ``text`` formatted as ``fmt``; the prompt keeps its last ``max_prompt`` tokens."""
    ids = keep_last(encode_prompt(tokenizer, fmt, [(text, None)]), max_prompt)
    return generate(model, tokenizer, ids, options, stream=stream)


def chat(
    model: nn.Module,
    tokenizer: Any,
    fmt: str,
    options: GenerationOptions,
    lines: Iterable[str],
    *,
    max_prompt: int,
    out: TextIO,
    prompt_mark: TextIO | None = None,
) -> list[tuple[str, str]]:
    """An interactive session: each line of ``lines`` is the user's turn, the whole conversation so far is
    the prompt (formatted as ``fmt``, its oldest tokens dropped past ``max_prompt``), each reply streams to
    ``out``. ``/exit`` or the end of ``lines`` ends it; blank lines are skipped. Returns the turns."""
    turns: list[tuple[str, str]] = []
    if prompt_mark is not None:
        prompt_mark.write("> ")
        prompt_mark.flush()
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip() == EXIT:
            break
        if text.strip():
            ids = keep_last(encode_prompt(tokenizer, fmt, [*turns, (text, None)]), max_prompt, "the conversation")
            turns.append((text, generate(model, tokenizer, ids, options, stream=out)))
        if prompt_mark is not None:
            prompt_mark.write("> ")
            prompt_mark.flush()
    return turns
