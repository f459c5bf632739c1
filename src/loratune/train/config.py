"""``RunConfig``: every option of a training run, declared once, from defaults, a YAML recipe and flags.

Each field carries its help text, its group, its allowed values or range, and whether it may change
when a run is resumed (``Option`` in the field's metadata). The command-line flags
(``train/options.py``), the recipe reader, the checks and ``compare``'s child command lines are all
built from that one table, so a flag and a recipe key can never disagree.

Precedence: flags > recipe > defaults. Defaults are the offline demo: the packaged MiniLM on the
packaged tweets. A recipe is a flat YAML mapping of the same names (dashes or underscores); a value
may be written as a string where a number is expected (PyYAML reads ``5e-4`` as one).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loratune.errors import LoratuneError
from loratune.prepare import KERNELS
from loratune.tasks import TASKS
from loratune.tasks.detect import guess_task

METHODS = ("lora", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PADDINGS = ("longest", "max_length")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Option:
    """How one ``RunConfig`` field is offered and checked."""

    help: str
    group: str
    choices: tuple[str, ...] = ()
    low: float | None = None  # smallest allowed value (inclusive unless low_open)
    high: float | None = None  # largest allowed value (inclusive unless high_open)
    low_open: bool = False
    high_open: bool = False
    resumable: bool = False  # may differ from the checkpointed run's value on --resume
    flag: str | None = None  # a negative switch such as "--no-progress" (stores False)


def _opt(default: Any, help: str, group: str, **kw: Any) -> Any:
    return field(default=default, metadata={"option": Option(help, group, **kw)})


DATA, LORA, TRAINING, RUN = "model and data", "method and LoRA", "training", "run"


@dataclass
class RunConfig:
    """One training run. Field names are the CLI flags with dashes turned into underscores.

    Building one reads nothing: a ``task`` left None is inferred from the data where it is needed (``with_task``).
    """

    task: str | None = _opt(
        None,
        "what to learn: seq-cls (a label per text), token-cls (a tag per word, e.g. NER; its LoRA defaults: "
        "--r 16 --target-modules all-linear --lr 1e-3), causal-lm (text generation); default: inferred from the data",
        DATA,
        choices=tuple(TASKS),
    )
    model: str = _opt("minilm", "hub name, local folder, or alias 'minilm' or 'smollm2'", DATA)
    revision: str | None = _opt(
        None, "the hub model's branch, tag or commit (default: its latest); not for a local folder or alias", DATA
    )
    dataset: str | None = _opt(
        None, "'tweets' (the default), a hub dataset (imdb, glue/sst2), a file or a folder", DATA
    )
    dataset_revision: str | None = _opt(
        None, "the hub dataset's branch, tag or commit (default: its latest); not for local data or tweets", DATA
    )
    train_file: str | None = _opt(
        None, "local train file (csv, tsv, json, jsonl, parquet; token-cls: CoNLL columns or json/jsonl)", DATA
    )
    eval_file: str | None = _opt(None, "local eval file; without one, an eval split is held out", DATA)
    text_column: str | None = _opt(None, "text column (token-cls: the words list; default: detected)", DATA)
    label_column: str | None = _opt(None, "label column (token-cls: the tags list; default: detected)", DATA)
    encoding: str | None = _opt(
        None, "text encoding of the data files, e.g. latin-1 (default: UTF-8, bad bytes replaced with a warning)", DATA
    )
    train_size: int | None = _opt(
        None, "subsample the train split to N examples (seeded); causal-lm: the first N records", DATA, low=1
    )
    eval_size: int | None = _opt(
        None,
        "subsample the eval split to N examples (seeded); causal-lm: the N records after the train ones",
        DATA,
        low=1,
    )
    val_size: int | None = _opt(
        None,
        "hold N train examples out to choose the best checkpoint and stop early, the eval split then scored "
        "once at the end (0: none; default: the dataset's validation split, or 10 %% of train when the eval split "
        "is a separate test split)",
        DATA,
        low=0,
    )
    label_all_tokens: bool = _opt(
        False,
        "token-cls: train every sub-token of a word (its later pieces learn the inside tag, B-PER -> I-PER), "
        "not only its first; scoring stays at each word's first sub-token",
        DATA,
    )
    max_length: int = _opt(256, "truncate to N tokens", DATA, low=8)
    padding: str = _opt(
        "longest",
        "longest: pad each batch to its longest text; max_length: pad all to --max-length",
        DATA,
        choices=PADDINGS,
    )
    group_by_length: bool = _opt(
        True, "random batches instead of batches of similar lengths", DATA, flag="--no-group-by-length"
    )
    pad_to_multiple_of: int = _opt(
        16, "round each batch's length up to a multiple of N (1: exact): fewer distinct shapes", DATA, low=1
    )
    method: str = _opt("lora", "lora or full fine-tuning", LORA, choices=METHODS)
    r: int = _opt(8, "LoRA rank", LORA, low=1)
    alpha: float = _opt(32.0, "LoRA alpha (the update is scaled by alpha / r)", LORA, low=0, low_open=True)
    dropout: float = _opt(0.1, "LoRA dropout", LORA, low=0, high=1, high_open=True)
    target_modules: list[str] | str | None = _opt(  # noqa: RUF009 - _opt is dataclasses.field with metadata
        None, "comma-separated layer names, a regex, or all-linear (default: the architecture's)", LORA
    )
    rslora: bool = _opt(False, "scale by alpha / sqrt(r) (rank-stabilised LoRA)", LORA)
    loraplus_ratio: float | None = _opt(
        None,
        "LoRA+: train the B matrices at X times the learning rate, A and the head at --lr (Hayou et al. "
        "2024 suggest about 16; default: off, one rate for all; no effect with --method full)",
        LORA,
        low=0,
        low_open=True,
    )
    epochs: int = _opt(3, "passes over the train split", TRAINING, low=1)
    max_steps: int | None = _opt(
        None, "stop after N optimizer steps (may be raised on --resume: the schedule then stretches)", TRAINING, low=1
    )
    pause_at_step: int | None = _opt(
        None,
        "stop at optimizer step N with a checkpoint and an evaluation, the schedule unchanged; "
        "continue with --resume (and a later or no --pause-at-step)",
        TRAINING,
        low=1,
        resumable=True,
    )
    batch_size: int = _opt(16, "examples per batch", TRAINING, low=1)
    grad_accum: int = _opt(1, "gradient accumulation steps", TRAINING, low=1)
    lr: float | None = _opt(
        None, "learning rate (default 5e-4 for LoRA, 2e-5 for full)", TRAINING, low=0, low_open=True
    )
    weight_decay: float = _opt(0.01, "AdamW weight decay", TRAINING, low=0)
    warmup_ratio: float = _opt(0.1, "share of the steps with a linear warm-up", TRAINING, low=0, high=1, high_open=True)
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0: no clipping)", TRAINING, low=0)
    seed: int = _opt(42, "seed of the data order, the new head and LoRA's initialisation", TRAINING, low=0)
    precision: str = _opt(
        "auto", "auto: bf16 where the hardware has it natively, else fp32", TRAINING, choices=PRECISIONS
    )
    device: str | None = _opt(None, "cpu, cuda, cuda:1 (default: cuda when present)", TRAINING, resumable=True)
    gradient_checkpointing: bool = _opt(
        False, "recompute activations in the backward pass: less memory, more time", TRAINING, resumable=True
    )
    deterministic: bool = _opt(
        False,
        "deterministic algorithms only (torch.use_deterministic_algorithms, with cuBLAS and cuDNN set to "
        "match): without it a CUDA run's attention backward (SDPA) varies from run to run, so a resumed or "
        "repeated CUDA run ends slightly apart; slower. CPU runs repeat bit for bit either way",
        TRAINING,
    )
    kernels: str = _opt(
        "lean",
        "lean: loratune's attention and dropout kernels (same maths, less memory and time); torch: the model's own",
        TRAINING,
        choices=KERNELS,
    )
    malloc_tuning: bool = _opt(
        True,
        "leave glibc's malloc as it is (by default it keeps freed memory for reuse on CPU)",
        TRAINING,
        flag="--no-malloc-tuning",
        resumable=True,
    )
    trust_remote_code: bool = _opt(False, "run the model's own code from the hub", TRAINING, resumable=True)
    output: str = _opt("runs/demo", "run folder", RUN, resumable=True)
    resume: bool = _opt(False, "continue from the last checkpoint", RUN, resumable=True)
    overwrite: bool = _opt(False, "replace a non-empty --output", RUN, resumable=True)
    eval_every: int | None = _opt(None, "also evaluate every N steps", RUN, low=1, resumable=True)
    save_every: int | None = _opt(None, "also checkpoint every N steps", RUN, low=1, resumable=True)
    early_stopping_patience: int | None = _opt(None, "stop after N evaluations without gain", RUN, low=1)
    log_every: int = _opt(10, "log the training loss every N steps", RUN, low=1, resumable=True)
    report_to: str = _opt(
        "none",
        "also write the metrics for tensorboard (pip install 'loratune[tensorboard]'), or none",
        RUN,
        choices=("none", "tensorboard"),
        resumable=True,
    )
    dist_timeout: int = _opt(
        1800,
        "distributed runs: seconds a process waits for the others at a collective (all-reduce, gather) "
        "before the run fails",
        RUN,
        low=1,
        resumable=True,
    )
    progress: bool | None = _opt(
        None,
        "plain progress lines instead of a bar (the default off a terminal)",
        RUN,
        flag="--no-progress",
        resumable=True,
    )

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-4 if self.method == "lora" else 2e-5

    def validate(self) -> RunConfig:
        """Raise ``LoratuneError`` naming the flag and the fix for any out-of-range value."""
        check_config(self)
        return self


# ------------------------------------------------------------------------------------------ the table
@functools.cache
def options() -> dict[str, tuple[Option, str, Any]]:
    """``{field: (Option, kind, default)}`` in declaration order; kind is bool, int, float, str or list."""
    hints = typing.get_type_hints(RunConfig)
    out = {}
    for f in dataclasses.fields(RunConfig):
        args = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        kind = next(
            k for k in (bool, int, float, list, str) if k in args or any(typing.get_origin(a) is k for a in args)
        )
        out[f.name] = (f.metadata["option"], kind.__name__, f.default)
    return out


def flag_of(name: str) -> str:
    """The command-line flag of field ``name``: ``--max-grad-norm``, or its negative switch."""
    option = options()[name][0]
    return option.flag or "--" + name.replace("_", "-")


def resumable_options() -> list[str]:
    """Fields that may differ from the checkpointed run's value on ``--resume`` (``max_steps`` may grow)."""
    return [name for name, (option, _, _) in options().items() if option.resumable]


def resume_conflicts(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """``--flag old -> new`` for each option that shapes the run and differs from the run being resumed.

    ``saved`` is the run's ``run_config.json``; a field it lacks (an older loratune) counts as its default.
    ``max_steps`` may be raised; the learning rate compares by its effective value.
    """
    old = with_task(RunConfig(**{k: v for k, v in saved.items() if k in options()}))
    cfg = with_task(cfg)
    out = []
    for name, (option, _kind, _default) in options().items():
        before, after = getattr(old, name), getattr(cfg, name)
        if name == "lr":
            before, after = old.learning_rate, cfg.learning_rate
        if option.resumable or before == after:
            continue
        if name == "max_steps" and (after is None or (before is not None and after >= before)):
            continue
        out.append(f"{flag_of(name)} {_shown(before)} -> {_shown(after)}")
    return out


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    return ",".join(value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------- types and ranges
_EXPECTED = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "list": "a list of layer names or a string",
}


def coerce(name: str, value: Any, label: str | None = None) -> Any:
    """``value`` as field ``name``'s type; a ``LoratuneError`` naming ``label`` and the type otherwise.

    Number-like strings (``"5e-4"``, ``"8"``) are accepted for numbers, ``"true"``/``"false"`` for
    switches, and a comma-separated string for a list of layer names.
    """
    if value is None:
        return None
    kind = options()[name][1]
    try:
        return _COERCE[kind](value)
    except (TypeError, ValueError):
        raise LoratuneError(f"{label or flag_of(name)} must be {_EXPECTED[kind]}, got {value!r}") from None


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError


def _to_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError
        return int(v)
    return int(v)


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError
    out = float(v)
    if not math.isfinite(out):
        raise ValueError
    return out


def _to_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError
    return v


def _to_list(v: Any) -> list[str] | str:
    """Comma-separated names -> a list; one plain name (``c_attn``) -> a one-name list; ``all-linear`` and
    a string with regex characters (``.*attn.*``) stay a string (PEFT's rule: a regex for the whole path)."""
    if isinstance(v, str):
        parts = [t.strip() for t in v.split(",") if t.strip()]
        if not parts:
            raise ValueError
        if "," in v or (v.strip() != "all-linear" and re.fullmatch(r"[\w.-]+", v.strip())):
            return parts
        return v
    if isinstance(v, list | tuple) and v and all(isinstance(t, str) and t.strip() for t in v):
        return [t.strip() for t in v]
    raise TypeError


_COERCE = {"bool": _to_bool, "int": _to_int, "float": _to_float, "str": _to_str, "list": _to_list}


def range_text(o: Option) -> str:
    """The allowed values of a ranged option, as the checks word them (``>= 1``, ``in [0, 1)``)."""
    if o.low is not None and o.high is not None:
        return f"in {'(' if o.low_open else '['}{o.low:g}, {o.high:g}{')' if o.high_open else ']'}"
    if o.low is not None:
        return f"{'>' if o.low_open else '>='} {o.low:g}"
    return f"{'<' if o.high_open else '<='} {o.high:g}"


def _in_range(o: Option, v: float) -> bool:
    low_ok = o.low is None or (v > o.low if o.low_open else v >= o.low)
    high_ok = o.high is None or (v < o.high if o.high_open else v <= o.high)
    return low_ok and high_ok


def check_config(cfg: RunConfig, labels: dict[str, str] | None = None) -> None:
    """Raise ``LoratuneError`` for the first value out of its choices or range (``labels``: field -> name)."""
    labels = labels or {}
    for name, (option, _kind, _default) in options().items():
        value = getattr(cfg, name)
        label = labels.get(name) or flag_of(name)
        if value is None:
            continue
        if option.choices and value not in option.choices:
            raise LoratuneError(f"{label} must be one of {', '.join(option.choices)}, got {value!r}")
        if (option.low is not None or option.high is not None) and not _in_range(option, value):
            raise LoratuneError(f"{label} must be {range_text(option)}, got {value:g}")
    if cfg.resume and cfg.overwrite:
        raise LoratuneError("--resume and --overwrite exclude each other; pick one")


# ------------------------------------------------------------------------------------------ recipes
def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into RunConfig field names, each value of its field's type."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LoratuneError(f"recipe {path} does not exist; see the recipes/ folder for examples") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = str(err).splitlines()[0]
        raise LoratuneError(f"recipe {path} is not readable YAML ({detail}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoratuneError(f"recipe {path} must be a mapping of option: value; fix the file")
    known = options()
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known or name in ("resume", "overwrite"):
            usable = ", ".join(n for n in known if n not in ("resume", "overwrite"))
            raise LoratuneError(f"recipe {path} has unknown option {key!r}; known options: {usable}")
        out[name] = coerce(name, value, f"{key!r} in recipe {path}")
    return out


# The offline demo (`loratune train` with no data options): a subsample of the packaged tweets, sized
# to finish in minutes on a laptop's CPU. recipes/demo.yaml spells the same run out.
DEMO = {"dataset": "tweets", "train_size": 4000, "eval_size": 1000, "max_length": 128}


def inferred_task(values: dict[str, Any]) -> str:
    """The task the data of ``values`` is for (``tasks.detect``), printed with the reason unless it is seq-cls
    (the task of a labelled table, and of the demo)."""
    guess = guess_task(values.get("dataset"), values.get("train_file"))
    if guess.task != "seq-cls":
        print(f"task: {guess.task} (inferred: {guess.reason}; pass --task to choose)", flush=True)
    return guess.task


def with_task(cfg: RunConfig) -> RunConfig:
    """``cfg``, its task inferred from the data (``tasks.detect``) when it names none: a config built directly,
    not by ``build_config`` (which also prints why). Reads the data files, and may ask the hub."""
    if cfg.task is not None:
        return cfg
    return dataclasses.replace(cfg, task=guess_task(cfg.dataset, cfg.train_file).task)


def task_defaults(task: str, method: str) -> dict[str, Any]:
    """The values ``task`` trains with by ``method`` where neither a flag nor the recipe sets the option
    (``Task.defaults``); none for an unknown task (the checks name it)."""
    from loratune.tasks import get_task

    if task not in TASKS:
        return {}
    return dict(get_task(task).defaults.get(method, {}))


def build_config(recipe: str | Path | None = None, *, apply_task_defaults: bool = True, **flags: Any) -> RunConfig:
    """Defaults, then the task's defaults for the method (``Task.defaults``), then the recipe, then ``flags``
    (field -> value; None means "not given"), checked.

    When neither the recipe nor the flags name any data, the run is the offline demo (``DEMO``).
    ``apply_task_defaults=False`` leaves the task's defaults out: ``compare`` builds its children's command
    lines from such a config, so each child applies those of its own method.
    """
    values: dict[str, Any] = load_recipe(recipe) if recipe else {}
    labels = {name: f"{name!r} in recipe {recipe}" for name in values}
    for name, value in flags.items():
        if value is not None:
            if name not in options():
                raise LoratuneError(f"unknown option {name!r}; see loratune train --help")
            values[name] = coerce(name, value)
            labels.pop(name, None)
    if not any(values.get(k) for k in ("dataset", "train_file", "eval_file")):
        values = {**DEMO, **values}
    if values.get("task") is None:
        values["task"] = inferred_task(values)
    if apply_task_defaults:
        fields = options()
        task, method = values.get("task", fields["task"][2]), values.get("method", fields["method"][2])
        for name, value in task_defaults(task, method).items():
            values.setdefault(name, coerce(name, value))
    cfg = RunConfig(**values)
    check_config(cfg, labels)
    return cfg


def changed_options(cfg: RunConfig) -> dict[str, Any]:
    """The fields of ``cfg`` whose value differs from the default, in declaration order."""
    return {name: getattr(cfg, name) for name, (_, _, default) in options().items() if getattr(cfg, name) != default}


def as_flags(values: dict[str, Any]) -> list[str]:
    """Command-line flags that give each field in ``values`` its value (``None`` values are left out)."""
    argv: list[str] = []
    for name, value in values.items():
        option, kind, _default = options()[name]
        if value is None:
            continue
        if kind == "bool":
            if value is (option.flag is None):  # a switch that is on, or a negative switch that is off
                argv.append(flag_of(name))
        elif isinstance(value, list):
            argv += [flag_of(name), ",".join(value)]
        else:
            argv += [flag_of(name), str(value)]
    return argv
