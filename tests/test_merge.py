"""``loratune merge``: an adapter merged into its base model, saved as a plain transformers model that
loads without loratune and computes what the adapter model computes; the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import save_tiny_gpt2, save_tiny_llama
from loratune import LoraConfig, add_lora, disable_adapter, save_adapter
from loratune.artifacts import load_artifact
from loratune.cli import main
from loratune.tasks import get_task

LABELS = {"seq-cls": ["negative", "positive", "neutral"], "token-cls": ["O", "B-PER", "I-PER"], "causal-lm": None}
AUTO = {"seq-cls": "AutoModelForSequenceClassification", "token-cls": "AutoModelForTokenClassification",
        "causal-lm": "AutoModelForCausalLM"}  # fmt: skip


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("merge-llama"), dtype=torch.float32)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, llama_dir) -> Path:
    """A tiny GPT-2 (Conv1D layers, lm_head tied to the embeddings) with the word-level tokenizer."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("merge-gpt2"), llama_dir)


def make_adapter(base: Path, task_name: str, folder: Path, targets: list[str]) -> Path:
    """An adapter with random (non-zero) LoRA weights and a random head, saved as ``loratune train`` saves one."""
    from loratune.models import load_tokenizer

    task = get_task(task_name)
    labels = LABELS[task_name]
    net = task.load_model(str(base), {"labels": labels})
    torch.manual_seed(1)
    heads = task.modules_to_save(net) if task.has_labels else None
    add_lora(net, LoraConfig(r=4, alpha=8, target_modules=targets, modules_to_save=heads, init_lora_weights=False,
                             task_type=task.peft_task_type, base_model_name_or_path=str(base)))  # fmt: skip
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.requires_grad and "modules_to_save" in name:
                p.normal_(0, 0.5)
    save_adapter(net, folder)
    load_tokenizer(str(base)).save_pretrained(folder)
    info = {"task": task_name, "method": "lora", "labels": labels, "base_model": str(base), "max_length": 32}
    (folder / "loratune.json").write_text(json.dumps(info))
    return folder


def _inputs(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["the movie was good", "a really dull and boring film quite weak"]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


CASES = {
    "seq-cls": ("bert", ["query", "value"]),
    "token-cls": ("bert", ["query", "value", "dense"]),
    "llama": ("llama", ["q_proj", "v_proj", "down_proj"]),
    "gpt2": ("gpt2", ["c_attn", "c_proj"]),
    "gpt2-tied-head": ("gpt2", ["c_attn", "lm_head"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merged_model_loads_without_loratune_and_matches_the_adapter(case, tiny_model_dir, llama_dir, gpt2_dir,
                                                                      tmp_path, capsys):  # fmt: skip
    import transformers

    kind, targets = CASES[case]
    task_name = case if kind == "bert" else "causal-lm"
    base = {"bert": tiny_model_dir, "llama": llama_dir, "gpt2": gpt2_dir}[kind]
    adapter = make_adapter(base, task_name, tmp_path / "adapter", targets)
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 0
    assert "merged" in capsys.readouterr().out

    names = sorted(p.name for p in out.iterdir())
    assert any(n.endswith(".safetensors") for n in names)
    assert not any(n.endswith((".bin", ".pt", ".pth")) or n.startswith("adapter_") for n in names), names
    info = json.loads((out / "loratune.json").read_text())
    assert info["method"] == "merged" and info["merged_from"] == str(adapter) and info["task"] == task_name

    loaded = load_artifact(adapter)
    assert loaded.kind == "lora"
    plain = getattr(transformers, AUTO[task_name]).from_pretrained(out).eval()
    assert type(plain).__module__.startswith("transformers.")
    assert not any("lora" in n for n, _ in plain.named_parameters())
    inputs = _inputs(loaded.tokenizer)
    with torch.no_grad():
        want = loaded.model(**inputs).logits
        got = plain(**inputs).logits
        with disable_adapter(loaded.model):
            base_logits = loaded.model(**inputs).logits
    assert not torch.allclose(want, base_logits, atol=1e-3)  # the adapter changes the outputs: a real test
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    if LABELS[task_name]:
        assert plain.config.id2label == dict(enumerate(LABELS[task_name]))
        assert plain.config.label2id == {name: i for i, name in enumerate(LABELS[task_name])}
    if kind == "gpt2":  # tied weights stay consistent: the embeddings are the base's
        base_model = transformers.AutoModelForCausalLM.from_pretrained(base)
        assert torch.equal(plain.get_input_embeddings().weight, base_model.get_input_embeddings().weight)
        tied = plain.get_output_embeddings().weight is plain.get_input_embeddings().weight
        assert tied == ("lm_head" not in targets)

    again = load_artifact(out)  # loratune loads the merged folder as a full model
    assert again.kind == "full" and again.labels == (LABELS[task_name] or [])
    with torch.no_grad():
        torch.testing.assert_close(again.model(**inputs).logits, want, atol=1e-4, rtol=0)


def test_predict_on_the_merged_folder_gives_the_adapters_labels(tiny_model_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_model_dir, "seq-cls", tmp_path / "adapter", ["query", "value"])
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 0
    capsys.readouterr()
    texts = ["the movie was good", "a dull film", "wonderful acting", "the plot was awful and weak"]
    results = []
    for folder in (adapter, out):
        assert main(["predict", "--adapter", str(folder), "--json", "--device", "cpu", *texts]) == 0
        results.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert [r["label"] for r in results[0]] == [r["label"] for r in results[1]]
    for a, b in zip(*results, strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-4)


def _stored(folder: Path) -> set[torch.dtype]:
    from safetensors import safe_open

    with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


@pytest.mark.parametrize("stored", ["fp32", "bf16"])
def test_weights_are_saved_in_the_base_dtype_or_dtype(stored, tiny_model_dir, tiny_bert_bf16_dir, tmp_path):
    base, want = (tiny_model_dir, torch.float32) if stored == "fp32" else (tiny_bert_bf16_dir, torch.bfloat16)
    adapter = make_adapter(base, "seq-cls", tmp_path / "adapter", ["query"])
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "default")]) == 0
    assert _stored(tmp_path / "default") == {want}
    for flag, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / flag), "--dtype", flag]) == 0
        assert _stored(tmp_path / flag) == {dtype}


def _refused(argv, capsys, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_refusals_write_nothing(tiny_model_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_model_dir, "seq-cls", tmp_path / "adapter", ["query"])
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())

    _refused(["merge", "--adapter", str(out), "--output", str(tmp_path / "x")], capsys, "already merged")
    _refused(["merge", "--adapter", str(tiny_model_dir), "--output", str(tmp_path / "x")], capsys, "already merged")
    _refused(["merge", "--adapter", str(tmp_path / "nope"), "--output", str(tmp_path / "x")], capsys, "does not exist")
    (tmp_path / "empty").mkdir()
    _refused(["merge", "--adapter", str(tmp_path / "empty"), "--output", str(tmp_path / "x")], capsys,
             "adapter_config.json")  # fmt: skip
    _refused(["merge", "--adapter", str(adapter), "--output", str(out)], capsys, "--overwrite")
    _refused(["merge", "--adapter", str(adapter), "--output", str(adapter / "merged")], capsys, "inside --adapter")
    _refused(["merge", "--adapter", str(adapter), "--output", str(adapter)], capsys, "inside --adapter")
    assert not (tmp_path / "x").exists() and not (adapter / "merged").exists()
    assert sorted(p.name for p in out.iterdir()) == before
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())

    (out / "stale.txt").write_text("x")
    assert main(["merge", "--adapter", str(adapter), "--output", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    (tmp_path / "empty-out").mkdir()
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "empty-out")]) == 0


def test_generate_and_predict_on_a_merged_causal_lm_give_the_adapters_text(llama_dir, tmp_path, capsys):
    adapter = make_adapter(llama_dir, "causal-lm", tmp_path / "adapter", ["q_proj", "v_proj", "down_proj"])
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 0
    capsys.readouterr()
    texts = []
    for folder in (adapter, out):
        assert main(["generate", "--adapter", str(folder), "--device", "cpu", "--max-new-tokens", "8",
                     "the plot was dull"]) == 0  # fmt: skip
        assert main(["predict", "--adapter", str(folder), "--device", "cpu", "--json", "the movie was good"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].strip()


def test_a_trained_adapter_merges_and_evaluates_the_same(trained_run, tmp_path, capsys):
    """An adapter as ``loratune train`` saves it (fingerprint, data, metrics in loratune.json): ``eval`` on
    the merged folder scores what it scores on the adapter."""
    run = trained_run.folder
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(run / "adapter"), "--output", str(out)]) == 0
    capsys.readouterr()
    records = []
    for folder in (run / "adapter", out):
        assert main(["eval", "--adapter", str(folder), "--device", "cpu", "--json"]) == 0
        records.append(json.loads(capsys.readouterr().out))
    assert records[0]["accuracy"] == records[1]["accuracy"]
    assert records[0]["loss"] == pytest.approx(records[1]["loss"], abs=1e-4)
    assert records[0]["labels"] == records[1]["labels"]


# ------------------------------------------------------------------------------ --overwrite keeps the sources
def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("where", ["run", "cwd", "cwd-parent", "model"])
def test_overwrite_never_deletes_the_source_nor_the_current_directory(where, tiny_model_dir, tmp_path, capsys,
                                                                      monkeypatch):  # fmt: skip
    run = tmp_path / "run"
    adapter = make_adapter(tiny_model_dir, "seq-cls", run / "adapter", ["query", "value"])
    (run / "summary.json").write_text("{}")
    args = ["merge", "--adapter", str(adapter), "--overwrite", "--output"]
    if where == "run":
        args.append(str(run))
    elif where == "model":
        model = run / "base"
        shutil.copytree(tiny_model_dir, model)  # a local base model inside the output
        args = [*args, str(run), "--model", str(model)]
        args[2] = str(make_adapter(tiny_model_dir, "seq-cls", tmp_path / "elsewhere", ["query", "value"]))
    else:
        monkeypatch.chdir(run / "adapter" if where == "cwd-parent" else run)
        args.append(".." if where == "cwd-parent" else ".")
    before, siblings = _tree(tmp_path), set(tmp_path.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "--overwrite" in err, err
    assert _tree(tmp_path) == before and set(tmp_path.iterdir()) == siblings  # no hidden temp folder either


def test_a_legal_long_output_name_merges(tiny_model_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_model_dir, "seq-cls", tmp_path / "adapter", ["query", "value"])
    out = tmp_path / ("m" * 250)
    assert main(["merge", "--adapter", str(adapter), "--output", str(out)]) == 0, capsys.readouterr().err
    assert (out / "config.json").is_file()
    assert main(["merge", "--adapter", str(adapter), "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["adapter", out.name])


def test_a_base_read_from_gguf_merges_into_plain_weights(llama_dir, tmp_path):
    """A GGUF base is de-quantised when loaded, but keeps transformers' GGUF quantizer, which refuses to save
    (transformers without that quantizer keeps none, so there is nothing to test)."""
    GgufHfQuantizer = pytest.importorskip("transformers.quantizers.quantizer_gguf").GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    from loratune.merge import merged_model

    adapter = make_adapter(llama_dir, "causal-lm", tmp_path / "adapter", ["q_proj", "v_proj"])
    loaded = load_artifact(adapter)
    config = GgufConfig(gguf_file="base.gguf")
    config.dequantize = True
    loaded.model.hf_quantizer = GgufHfQuantizer(config)
    loaded.model.config.quantization_config = config
    net = merged_model(loaded)
    net.save_pretrained(tmp_path / "merged", safe_serialization=True)
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
