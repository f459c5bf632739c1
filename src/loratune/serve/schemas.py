"""The server's request bodies (pydantic), its limits, and the checks pydantic cannot express.

Texts and adapter names are strict strings: a number is refused, not turned into a string. The limits
(texts per request, characters per text, new tokens) are the server's flags, so they are checked here
after parsing, with a 413 for a request that is too large and a 422 for one that is malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

MAX_SEED = 2**64 - 1  # torch.manual_seed's largest


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``loratune serve``'s flags of the same names)."""

    max_texts: int = 64
    max_text_chars: int = 10_000
    max_new_tokens: int = 512
    max_body_bytes: int = 1_000_000


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"holds a lone surrogate ({text[err.start]!r}) at character {err.start}; send valid "
            "Unicode text (a JSON \\ud800-\\udfff escape must be one of a pair)"
        ) from None
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]  # a strict string that encodes as UTF-8


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message naming the fix."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class PredictItem(BaseModel):
    """One text for one adapter, in a mixed request."""

    model_config = ConfigDict(extra="forbid")
    adapter: Text = Field(description="a registry adapter's name")
    text: Text


class PredictRequest(BaseModel):
    """``{"adapter", "texts"}`` for one adapter, or ``{"items": [{"adapter", "text"}, ...]}`` for several."""

    model_config = ConfigDict(extra="forbid")
    adapter: Text | None = Field(None, description="the adapter for every text of `texts`")
    texts: list[Text] | None = None
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


UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "echo",
    "best_of",
    "suffix",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "parallel_tool_calls",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
)
IGNORED = ("user", "metadata", "store", "stream_options", "service_tier")  # no effect on the answer


class _Generation(BaseModel):
    """OpenAI's generation fields that loratune honours. Fields it does not support are refused with a 422
    naming them, unless they hold their neutral value (null, false, 0, 1 for ``best_of``); ``IGNORED``
    fields change nothing in an answer."""

    model_config = ConfigDict(extra="ignore")
    model: Text = Field(description="the causal-lm adapter's name")
    max_tokens: int | None = Field(None, ge=1, description="new tokens at most (default 128)")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name of max_tokens")
    temperature: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="0 (the default, unlike OpenAI's 1): greedy, repeatable"
    )
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed gives the same sampled text")
    stream: bool = Field(False, description="send the text as server-sent events as it is generated")
    n: Literal[1] = Field(1, description="one answer per request")
    stop: None = Field(None, description="not supported: the answer ends at the model's end-of-sequence token")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in UNSUPPORTED:
                value = data.get(key)
                if value not in (None, False, 0, "", [], {}) and not (key == "best_of" and value == 1):
                    raise ValueError(f"{key} is not supported by loratune's server; leave it out")
        return data

    def token_limit(self) -> tuple[str, int | None]:
        """The field that sets the new tokens and its value (``max_completion_tokens`` first)."""
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise RequestError(422, "max_tokens and max_completion_tokens differ; pass one of them")
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


class CompletionRequest(_Generation):
    """``POST /v1/completions``: the prompt is formatted as the adapter's training data was, unless ``raw``."""

    prompt: Text | list[Text] = Field(description="one prompt (a list of one is accepted)")
    raw: bool = Field(False, description="send the prompt as it is, with no chat or Alpaca template")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Text


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
