"""Language-model data: plain text packed into blocks, and instruction records with the loss on the response only.

Two kinds of data, told apart by their fields:

* **text**: a ``.txt`` file (its documents are the paragraphs between blank lines), or records with a
  text column (``text``, ``content``, ... or ``--text-column``). Each document is tokenised, the
  documents are joined with the EOS token between them, and the stream is cut into blocks of
  ``max_length`` tokens; the last, shorter block is kept (padded in its batch, the padding masked).
  ``labels`` = ``input_ids`` (the model shifts them).
* **instruction**: JSON/JSONL (or CSV/Parquet) records ``{"instruction", "input", "output"}``;
  ``instruction`` and ``output`` are required, ``input`` is optional (missing, null or empty: none).
  The prompt is the tokenizer's chat template (user turn = instruction, a blank line, input; assistant
  turn = output) where the tokenizer has one, else the Alpaca template (``ALPACA``). The prompt's
  tokens get label -100: the loss is on the response (and the chat template's end-of-turn tokens,
  or the EOS that ends an Alpaca response) only.

Records are never shuffled: the sizes take records in file order (``data.splits.in_file_order``), so that
``--train-size 935 --eval-size 110`` trains on records 0-934 and evaluates on records 935-1044.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from loratune.data.labelled_texts import TEXT_COLUMN_CANDIDATES
from loratune.data.load import read_source
from loratune.data.options import DataOptions
from loratune.data.readers import JSON_SUFFIXES, json_records, paragraphs, read_table, read_text
from loratune.data.resolve import Layout
from loratune.data.splits import in_file_order, take
from loratune.errors import DataError

log = logging.getLogger(__name__)

INSTRUCTION, TEXT = "instruction", "text"  # the two kinds of data
CHAT_TEMPLATE, ALPACA, PLAIN = "chat-template", "alpaca", "plain"  # prompt formats (loratune.json "prompt_format")
PROMPT_FORMATS = (CHAT_TEMPLATE, ALPACA, PLAIN)
IGNORE = -100  # the label of a position without loss

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
EXPECTS = (
    "causal-lm expects instruction records (fields instruction and output, input optional), records with a "
    f"text column ({', '.join(TEXT_COLUMN_CANDIDATES)}, or --text-column NAME), or a .txt file; seq-cls expects "
    "a text column and a label column"
)
LM_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv", ".parquet")
LAYOUT = Layout(
    needs="causal-lm reads local files: pass --train-file PATH (a .txt, .json or .jsonl file) or --dataset PATH.",
    data="text or instruction records",
    examples="train.txt, train.jsonl",
    suffixes=LM_SUFFIXES,
    test_names=("test", "eval", "validation", "valid", "val", "dev"),
    validation_names=(),
    hub=False,
)


@dataclass
class LMData:
    """The train, eval and (optional) validation records of a causal-lm run, in file order.

    Instruction splits have the columns ``instruction``, ``input``, ``output``; text splits ``text``.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    source: str
    kind: str  # INSTRUCTION or TEXT
    val: datasets.Dataset | None = None
    selection: str = ""


# ------------------------------------------------------------------------------------------ reading
def load_lm_data(dataset: str | None = None, **options: Any) -> LMData:
    """Local files of text or instruction records: ``dataset`` and ``options`` are :class:`DataOptions`' fields
    (see :func:`load_lm_records`)."""
    return load_lm_records(DataOptions(dataset=dataset, **options))


def load_lm_records(options: DataOptions) -> LMData:
    """Local files of text or instruction records, split in file order (``data.splits.in_file_order``;
    nothing is shuffled, the seed is unused).

    ``options.dataset`` is a file (the train file) or a folder with a ``train.*`` file and optionally a
    ``test.*``/``eval.*``/``validation.*``/``val.*``/``dev.*`` one; or ``train_file`` (and ``eval_file``).
    ``options.for_eval``: only the eval split matters (``loratune eval``): no checks on the train split.
    """
    read = read_source(options, LMRecords())
    train, ev = read.train, read.eval
    eval_file = ev.path if ev is not None else None
    plan = in_file_order(len(train), len(ev) if ev is not None else None, train.path, eval_file, options)
    evaluated = train if ev is None else ev
    kind = train.data_kind
    val = _dataset(kind, take(train.records, plan.val)) if plan.val is not None else None
    splits = [
        _dataset(kind, take(split.records, rows)) for split, rows in ((train, plan.train), (evaluated, plan.eval))
    ]
    return LMData(*splits, read.source, kind, val, plan.selection)


@dataclass
class Records:
    """One file's records: instruction dicts or texts (``data_kind``), and its path."""

    data_kind: str  # INSTRUCTION or TEXT
    records: list[Any]
    path: Path
    kind: str = "test"  # what the data calls this split

    def __len__(self) -> int:
        return len(self.records)

    @property
    def name(self) -> str:
        return self.path.name


class LMRecords:
    """The causal-lm schema: instruction records, records with a text column, or plain text."""

    layout = LAYOUT
    unit = "records"

    def read_file(self, path: Path, options: DataOptions, train: Records | None = None) -> Records:
        split = Records(*read_lm_file(path, options.text_column, options.encoding), path)
        if train is not None and split.data_kind != train.data_kind:
            raise DataError(
                f"{train.path} holds {train.data_kind} data and {path} {split.data_kind} data; pass files of one kind"
            )
        return split


def _dataset(kind: str, records: Sequence[Any]) -> datasets.Dataset:
    if kind == TEXT:
        return datasets.Dataset.from_dict(
            {"text": [str(r) for r in records]}, features=datasets.Features({"text": datasets.Value("string")})
        )
    fields = ("instruction", "input", "output")
    features = datasets.Features({f: datasets.Value("string") for f in fields})
    return datasets.Dataset.from_dict({f: [r[f] for r in records] for f in fields}, features=features)


def read_lm_file(path: Path, text_column: str | None = None, encoding: str | None = None) -> tuple[str, list[Any]]:
    """``(kind, records)``: a ``.txt`` file's paragraphs (TEXT), or the records of a JSON/JSONL/CSV/Parquet
    file as instruction dicts (INSTRUCTION) or texts (TEXT); a record without a required field is an error
    naming its index (counting from 0)."""
    suffix = path.suffix.lower()
    if suffix not in LM_SUFFIXES:
        raise DataError(
            f"cannot read {path}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(LM_SUFFIXES)}"
        )
    if suffix == ".txt":
        docs = paragraphs(read_text(path, encoding))
        if not docs:
            raise DataError(f"{path} has no text; fill it or pass another file.")
        return TEXT, docs
    if suffix in JSON_SUFFIXES:
        records = [record for _, record in json_records(read_text(path, encoding), path.name, lines=suffix == ".jsonl")]
    else:
        records = read_table(path, encoding).to_list()
    if not records:
        raise DataError(f"{path} has no records; fill it or pass another file.")
    return records_kind(records, path.name, text_column)


def _check_text_fields(record: dict[str, Any], where: str) -> None:
    """Refuse an instruction record whose instruction, input or output is not text: it would train on its repr."""
    for field in ("instruction", "input", "output"):
        value = record.get(field)
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{where}: '{field}' is a {type(value).__name__} ({str(value)[:40]!r}), not text; write it as a "
                "string or remove the record"
            )


def records_kind(records: Sequence[Any], name: str, text_column: str | None = None) -> tuple[str, list[Any]]:
    """Tell instruction records from text records and check each one (see :func:`read_lm_file`)."""
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(
                f"record {i} of {name} is a JSON {type(record).__name__}, not an object; "
                "pass objects with instruction/output fields or a text field"
            )
    keys = list(dict.fromkeys(k for r in records for k in r))
    if text_column is None and ("instruction" in keys or "output" in keys):
        out = []
        for i, record in enumerate(records):
            for field in ("instruction", "output"):
                if _missing(record.get(field)):
                    raise DataError(
                        f"record {i} of {name} (counting from 0) has no '{field}'; every instruction record needs "
                        "'instruction' and 'output' ('input' is optional): fill it in or remove the record"
                    )
            _check_text_fields(record, f"record {i} of {name} (counting from 0)")
            given = record.get("input")
            out.append(
                {
                    "instruction": str(record["instruction"]),
                    "input": "" if given is None else str(given),
                    "output": str(record["output"]),
                }
            )
        return INSTRUCTION, out
    lowered = {k.lower(): k for k in keys}
    column = text_column if text_column in keys else None
    if text_column is not None and column is None:
        raise DataError(
            f"column '{text_column}' not found in {name}; the columns are: {', '.join(keys)}. Pass --text-column NAME."
        )
    column = column or next((lowered[c] for c in TEXT_COLUMN_CANDIDATES if c in lowered), None)
    if column is None:
        raise DataError(f"{name} has no usable columns (found: {', '.join(keys) or 'none'}); {EXPECTS}")
    texts = []
    for i, record in enumerate(records):
        if _missing(record.get(column)):
            raise DataError(f"record {i} of {name} (counting from 0) has no '{column}'; fill it in or remove it")
        texts.append(str(record[column]))
    return TEXT, texts


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# ------------------------------------------------------------------------------------------ prompts
def prompt_format_of(tokenizer: Any) -> str:
    """How instructions are shown to a model with ``tokenizer``: its chat template, else Alpaca's."""
    return CHAT_TEMPLATE if getattr(tokenizer, "chat_template", None) else ALPACA


def user_turn(instruction: str, input: str = "") -> str:
    """The user's message of an instruction record: the instruction, then (after a blank line) its input."""
    return f"{instruction}\n\n{input}" if input and input.strip() else instruction


def alpaca_prompt(instruction: str, input: str = "") -> str:
    if input and input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def encode_prompt(tokenizer: Any, prompt_format: str, turns: Sequence[tuple[str, str | None]]) -> list[int]:
    """Token ids of a prompt that ends where the model's answer begins.

    ``turns``: ``(user message, assistant reply)`` pairs, the last reply None (the one to generate).
    chat-template: the conversation through the template with its generation prompt; alpaca: one
    Alpaca block per turn; plain: the texts as they are, replies following their prompts.
    """
    if prompt_format == CHAT_TEMPLATE:
        messages = []
        for user, reply in turns:
            messages.append({"role": "user", "content": user})
            if reply is not None:
                messages.append({"role": "assistant", "content": reply})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if prompt_format == ALPACA:
        text = "".join(alpaca_prompt(user) + (f"{reply}\n\n" if reply is not None else "") for user, reply in turns)
    elif prompt_format == PLAIN:
        text = "".join(user + (reply or "") for user, reply in turns)
    else:
        raise DataError(f"unknown prompt format {prompt_format!r}; use one of {', '.join(PROMPT_FORMATS)}")
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


ROLES = ("system", "user", "assistant")


def encode_messages(tokenizer: Any, prompt_format: str, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat (``{"role", "content"}`` dicts, OpenAI's format) that ends where the assistant's
    next reply begins. The chat template takes the messages as they are; the other formats take
    ``encode_prompt``'s turns, a system message put before the next user message."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"messages[{i}] needs a role ({', '.join(ROLES)}) and a string content")
    if not messages or messages[-1]["role"] != "user":
        raise DataError("the last message must be the user's: the reply to it is what is generated")
    if prompt_format == CHAT_TEMPLATE:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    turns: list[tuple[str, str | None]] = []
    system = ""
    for m in messages:
        if m["role"] == "system":
            system += m["content"] + "\n\n"
        elif m["role"] == "user":
            turns.append((system + m["content"], None))
            system = ""
        elif turns and turns[-1][1] is None:
            turns[-1] = (turns[-1][0], m["content"])
        else:
            raise DataError("an assistant message must follow a user message")
    return encode_prompt(tokenizer, prompt_format, turns)


def instruction_ids(
    tokenizer: Any, prompt_format: str, instruction: str, input: str, output: str
) -> tuple[list[int], list[int]]:
    """``(prompt ids, response ids)`` of one record; the training example is their concatenation.

    chat-template: the prompt is the user turn with the template's generation prompt, the response
    the rest of the whole conversation's text (its reply and end-of-turn tokens). The prompt's text
    must be a prefix of the conversation's (a template that rewrites earlier turns, or puts text of
    its own after the generation prompt, is refused). Both parts are tokenised apart, so the prompt
    ids are exactly the ids the model sees when it generates.
    alpaca: the Alpaca prompt (with the tokenizer's special tokens, e.g. BOS) and the output + EOS.
    """
    if prompt_format == CHAT_TEMPLATE:
        user = [{"role": "user", "content": user_turn(instruction, input)}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": output}], tokenize=False)
        if not full.startswith(prompt):
            raise DataError(
                "the tokenizer's chat template does not extend the prompt (user turn + generation prompt) into the "
                "conversation (user + assistant turns), so the prompt's tokens cannot be masked; pass a model "
                "whose chat template does, or remove chat_template from its tokenizer_config.json to use Alpaca's"
            )
        tok = tokenizer([prompt, full[len(prompt) :]], add_special_tokens=False)["input_ids"]
        return list(tok[0]), list(tok[1])
    prompt_ids = list(tokenizer(alpaca_prompt(instruction, input), add_special_tokens=True)["input_ids"])
    response = list(tokenizer(output, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        response.append(int(tokenizer.eos_token_id))
    return prompt_ids, response


# ------------------------------------------------------------------------------------------ tokenising
def tokenize_instructions(
    ds: datasets.Dataset, tokenizer: Any, max_length: int, prompt_format: str
) -> datasets.Dataset:
    """``input_ids`` (prompt + response, cut to ``max_length`` at the end), ``labels`` (-100 on the prompt),
    ``attention_mask`` and ``length``; records whose prompt fills ``max_length`` are left out (a warning)."""
    columns: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": [], "length": []}
    cut = dropped = 0
    for record in ds:
        prompt, response = instruction_ids(
            tokenizer, prompt_format, record["instruction"], record["input"], record["output"]
        )
        if len(prompt) >= max_length:
            dropped += 1
            continue
        ids = (prompt + response)[:max_length]
        cut += len(prompt) + len(response) > max_length
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([IGNORE] * len(prompt) + ids[len(prompt) :])
        columns["length"].append(len(ids))
    if dropped:
        log.warning(
            "%d of %d records have a prompt of --max-length %d tokens or more and are left out",
            dropped,
            len(ds),
            max_length,
        )
    if cut:
        log.warning(
            "%d of %d records are longer than --max-length %d tokens; their responses are cut", cut, len(ds), max_length
        )
    if not columns["input_ids"]:
        raise DataError(f"every prompt is at least --max-length {max_length} tokens long; pass a larger --max-length")
    return datasets.Dataset.from_dict(columns)


def pack_texts(ds: datasets.Dataset, tokenizer: Any, max_length: int) -> datasets.Dataset:
    """The documents' tokens joined with EOS between them, in blocks of ``max_length`` (the last one may be
    shorter, and is kept); ``labels`` = ``input_ids``."""
    if max_length < 2:
        raise DataError(f"--max-length must be at least 2 to predict a next token, got {max_length}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for start in range(0, len(ds), 1000):
        for n, ids in enumerate(tokenizer(ds["text"][start : start + 1000], add_special_tokens=False)["input_ids"]):
            if (stream or n or start) and eos is not None:
                stream.append(int(eos))
            stream.extend(ids)
    blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    blocks = [b for b in blocks if len(b) >= 2]  # a block of one token has nothing to predict
    if not blocks:
        raise DataError("the text has fewer than 2 tokens; pass more text")
    return datasets.Dataset.from_dict(
        {
            "input_ids": blocks,
            "attention_mask": [[1] * len(b) for b in blocks],
            "labels": blocks,
            "length": [len(b) for b in blocks],
        }
    )


class LMCollator:
    """Right-pads ``input_ids`` (with the pad token), ``attention_mask`` (0) and ``labels`` (-100)."""

    def __init__(self, tokenizer: Any, *, max_length: int | None = None, pad_to_multiple_of: int | None = None):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise DataError("the tokenizer has no pad or EOS token; load it with loratune.models.load_tokenizer")
        self.pad, self.max_length, self.multiple = int(pad), max_length, pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        width = max(longest, self.max_length or 0)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        out = {
            key: torch.full((len(features), width), fill, dtype=torch.long)
            for key, fill in (("input_ids", self.pad), ("attention_mask", 0), ("labels", IGNORE))
        }
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            out["input_ids"][row, :n] = torch.as_tensor(f["input_ids"])
            out["attention_mask"][row, :n] = 1
            out["labels"][row, :n] = torch.as_tensor(f["labels"])
        return out
