"""The server's request bodies (pydantic), its limits, and the checks pydantic cannot express.

Texts and adapter names are strict strings: a number is refused, not turned into a string. The limits
(texts per request, characters per text, new tokens) are the server's flags, so they are checked here
after parsing, with a 413 for a request that is too large and a 422 for one that is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``loratune serve``'s flags of the same names)."""

    max_texts: int = 64
    max_text_chars: int = 10_000
    max_new_tokens: int = 512
    max_body_bytes: int = 1_000_000


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message naming the fix."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class PredictItem(BaseModel):
    """One text for one adapter, in a mixed request."""

    model_config = ConfigDict(extra="forbid")
    adapter: StrictStr = Field(description="a registry adapter's name")
    text: StrictStr


class PredictRequest(BaseModel):
    """``{"adapter", "texts"}`` for one adapter, or ``{"items": [{"adapter", "text"}, ...]}`` for several."""

    model_config = ConfigDict(extra="forbid")
    adapter: StrictStr | None = Field(None, description="the adapter for every text of `texts`")
    texts: list[StrictStr] | None = None
    items: list[PredictItem] | None = Field(None, description="a mixed request: each text with its adapter")


def predict_items(body: PredictRequest | list[PredictItem], limits: Limits) -> list[tuple[str, str]]:
    """The ``(adapter, text)`` pairs of a predict body (a JSON object, or a JSON list of items)."""
    if isinstance(body, list):
        pairs = [(x.adapter, x.text) for x in body]
        where = "items"
    elif body.items is not None:
        if body.adapter is not None or body.texts is not None:
            raise RequestError(422, 'pass either "adapter" with "texts", or "items", not both')
        pairs, where = [(x.adapter, x.text) for x in body.items], "items"
    elif body.adapter is None or body.texts is None:
        raise RequestError(422, 'pass "adapter" with "texts" (a list of strings), or "items" for a mixed request')
    else:
        pairs, where = [(body.adapter, t) for t in body.texts], "texts"
    check_texts([t for _, t in pairs], limits, where)
    return pairs


def check_texts(texts: list[str], limits: Limits, where: str) -> None:
    """Refuse no texts, empty ones (422), and too many or too long ones (413)."""
    if not texts:
        raise RequestError(422, f"{where} is empty; pass at least one text")
    if len(texts) > limits.max_texts:
        raise RequestError(
            413,
            f"{len(texts)} texts in one request, more than the limit of {limits.max_texts}; "
            "split the request (the server's --max-texts sets the limit)",
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise RequestError(422, f"{where}[{i}] is empty; pass a non-blank text")
        if len(text) > limits.max_text_chars:
            raise RequestError(
                413,
                f"{where}[{i}] has {len(text)} characters, more than the limit of "
                f"{limits.max_text_chars}; shorten it (the server's --max-text-chars)",
            )


class _Generation(BaseModel):
    """OpenAI's generation fields that loratune honours; other fields OpenAI clients send are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr = Field(description="the causal-lm adapter's name")
    max_tokens: int | None = Field(None, ge=1, description="new tokens at most (default 128)")
    temperature: float = Field(0.0, ge=0, description="0 (the default, unlike OpenAI's 1): greedy, repeatable")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, description="the same seed gives the same sampled text")
    stream: bool = Field(False, description="send the text as server-sent events as it is generated")
    n: Literal[1] = Field(1, description="one answer per request")
    stop: None = Field(None, description="not supported: the answer ends at the model's end-of-sequence token")


class CompletionRequest(_Generation):
    """``POST /v1/completions``: the prompt is formatted as the adapter's training data was, unless ``raw``."""

    prompt: StrictStr | list[StrictStr] = Field(description="one prompt (a list of one is accepted)")
    raw: bool = Field(False, description="send the prompt as it is, with no chat or Alpaca template")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatRequest(_Generation):
    """``POST /v1/chat/completions``: the conversation through the adapter's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)


def one_prompt(prompt: str | list[str], limits: Limits) -> str:
    """The single prompt of a completion request (checked like a predict text)."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if len(prompts) != 1:
        raise RequestError(422, f"{len(prompts)} prompts; send one prompt per request")
    check_texts(prompts, limits, "prompt")
    return prompts[0]
