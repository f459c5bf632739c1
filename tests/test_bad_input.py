"""The CLI through a table of bad inputs, and PEFT-saved adapters through predict and eval.

Each row of ``BAD`` gives one line ``error: ...`` that names the option, file or key, exit code 2, no
traceback, and leaves nothing written: stdout is empty and the folders it reads or writes are unchanged.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peft
import pytest
import torch
from safetensors.torch import load_file

from conftest import toy_rows, write_csv
from helpers import run
from loratune.cli import main


@dataclass
class Env:
    """What the rows work on: read-only artifacts (module-wide) and this row's own folder ``tmp``."""

    adapter: Path  # trained by loratune (with loratune.json)
    peft: Path  # saved by PEFT (no loratune.json), labels "0" and "1"
    peft_headless: Path  # saved by PEFT without task_type: no classifier head
    data: Path  # toy_data: train.csv + test.csv, labels negative/positive
    numeric_csv: Path  # labels 0/1, for the PEFT adapter
    model: Path  # the tiny base model
    train_warnings: list[warnings.WarningMessage]
    tmp: Path


@pytest.fixture(scope="module")
def artifacts(trained_run, tiny_model_dir, toy_data, tmp_path_factory) -> dict:
    """The session's trained adapter and two PEFT-saved ones, shared by every row of this module."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("bad-input")
    for name, task_type in (("peft", "SEQ_CLS"), ("peft-headless", None)):
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
        config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type=task_type)
        peft.get_peft_model(base, config).save_pretrained(str(root / name))
    numeric = write_csv(root / "numeric.csv", [(t, str(int(lab == "positive"))) for t, lab in toy_rows(12)])
    return {"adapter": trained_run.adapter, "peft": root / "peft", "peft_headless": root / "peft-headless",
            "data": toy_data, "numeric_csv": numeric, "model": tiny_model_dir,
            "train_warnings": trained_run.train_warnings}  # fmt: skip


@pytest.fixture
def env(artifacts, tmp_path, monkeypatch) -> Env:
    monkeypatch.chdir(tmp_path)
    return Env(**artifacts, tmp=tmp_path)


def snapshot(*folders: Path) -> dict[str, tuple[int, int, int]]:
    """Every file below ``folders``: its size, modification time and mode."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for folder in folders
        for p in sorted(folder.rglob("*"))
    }


# ------------------------------------------------------------------------------ broken artifacts
def copy_of(folder: Path, env: Env) -> Path:
    target = env.tmp / folder.name
    shutil.copytree(folder, target)
    return target


def truncated(folder: Path, name: str, env: Env) -> Path:
    copy = copy_of(folder, env)
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 2])
    return copy


def bin_only(env: Env) -> Path:
    copy = copy_of(env.peft, env)
    torch.save(load_file(str(copy / "adapter_model.safetensors")), copy / "adapter_model.bin")
    (copy / "adapter_model.safetensors").unlink()
    return copy


def without(folder: Path, name: str, env: Env) -> Path:
    copy = copy_of(folder, env)
    (copy / name).unlink()
    return copy


def edited_json(folder: Path, name: str, key: str, value: object, env: Env) -> Path:
    copy = copy_of(folder, env)
    data = json.loads((copy / name).read_text())
    (copy / name).write_text(json.dumps({**data, key: value}))
    return copy


def written(folder: Path, name: str, content: bytes, env: Env) -> Path:
    copy = copy_of(folder, env)
    (copy / name).write_bytes(content)
    return copy


def full_model(env: Env) -> Path:
    """A full fine-tuned model folder (config, weights, tokenizer), saved by hand."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = env.tmp / "saved" / "model"
    AutoModelForSequenceClassification.from_pretrained(env.model, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(env.model).save_pretrained(folder)
    return folder


# -------------------------------------------------------------------------------------- the table
Artifact = Callable[[Env], Path]
# name -> (how to make the broken artifact, what the error line must name)
BROKEN_ARTIFACTS: dict[str, tuple[Artifact, list[str]]] = {
    "peft-truncated-safetensors": (
        lambda e: truncated(e.peft, "adapter_model.safetensors", e),
        ["adapter_model.safetensors", "truncated"],
    ),
    "peft-bin-only": (bin_only, ["adapter_model.bin", "pickle", "safe_serialization=True"]),
    "peft-no-config": (lambda e: without(e.peft, "adapter_config.json", e), ["adapter_config.json"]),
    "peft-no-head": (lambda e: copy_of(e.peft_headless, e), ["no loratune.json", "classifier head"]),
    "peft-base-unnamed": (
        lambda e: edited_json(e.peft, "adapter_config.json", "base_model_name_or_path", None, e),
        ["does not name its base model", "--model"],
    ),
    "peft-base-missing": (
        lambda e: edited_json(e.peft, "adapter_config.json", "base_model_name_or_path", str(e.tmp / "gone"), e),
        ["gone", "does not exist"],
    ),
    "config-r-not-int": (
        lambda e: edited_json(e.adapter, "adapter_config.json", "r", "four", e),
        ["adapter_config.json", "'r'"],
    ),
    "config-targets-not-names": (
        lambda e: edited_json(e.adapter, "adapter_config.json", "target_modules", 5, e),
        ["'target_modules'"],
    ),
    "config-dropout-out-of-range": (
        lambda e: edited_json(e.adapter, "adapter_config.json", "lora_dropout", -1, e),
        ["adapter_config.json", "dropout", "[0, 1)"],
    ),
    "config-alpha-pattern-not-number": (
        lambda e: edited_json(e.adapter, "adapter_config.json", "alpha_pattern", {"query": [1]}, e),
        ["adapter_config.json", "alpha_pattern['query']"],
    ),
    "info-not-utf8": (lambda e: written(e.adapter, "loratune.json", b"\xff\xfe{", e), ["loratune.json"]),
    "info-not-object": (lambda e: written(e.adapter, "loratune.json", b"[1, 2]", e), ["loratune.json", "object"]),
    "info-labels-not-list": (
        lambda e: edited_json(e.adapter, "loratune.json", "labels", 5, e),
        ["loratune.json", "'labels'"],
    ),
    "info-max-length-not-int": (
        lambda e: edited_json(e.adapter, "loratune.json", "max_length", "long", e),
        ["'max_length'"],
    ),
    "info-data-not-object": (
        lambda e: edited_json(e.adapter, "loratune.json", "data", "tweets", e),
        ["loratune.json", "'data'"],
    ),
    "adapter-is-a-file": (lambda e: e.numeric_csv, ["--adapter", "is a file"]),
    "tokenizer-corrupt": (lambda e: written(e.adapter, "tokenizer.json", b'{"broken', e), ["tokenizer"]),
    "full-model-labels-mismatch": (
        lambda e: written(full_model(e), "loratune.json", b'{"labels": ["a", "b", "c"]}', e),
        ["loratune.json", "3 labels", "2 outputs"],
    ),
    "full-model-truncated": (
        lambda e: truncated(full_model(e), "model.safetensors", e),
        ["model", "corrupt or truncated"],
    ),
}


def inference(command: str, make: Artifact, *extra: str) -> Callable[[Env], list[str]]:
    """The argv of ``predict`` (one text) or ``eval`` (the 0/1 csv) on the artifact that ``make`` builds."""

    def argv(e: Env) -> list[str]:
        data = ["--eval-file", str(e.numeric_csv)] if command == "eval" else ["a text"]
        return [command, "--adapter", str(make(e)), *data, *extra]

    return argv


def _artifact_rows() -> list:
    return [
        pytest.param(inference(command, make), needles, id=f"{command}-{name}")
        for name, (make, needles) in BROKEN_ARTIFACTS.items()
        for command in ("predict", "eval")
    ]


def _option_rows() -> list:
    """Numeric options out of range: refused at parse time (or, for --max-length, against the model)."""
    cases = [
        ("--batch-size", "0", ["--batch-size", ">= 1", "got 0"]),
        ("--batch-size", "-3", ["--batch-size", ">= 1", "got -3"]),
        ("--batch-size", "two", ["--batch-size", "integer"]),
        ("--max-length", "0", ["--max-length", ">= 1", "got 0"]),
        ("--max-length", "-1", ["--max-length", ">= 1"]),
        ("--max-length", "4096", ["--max-length 4096", "128 positions", "max_position_embeddings"]),
    ]
    rows = [
        pytest.param(inference(command, lambda e: e.adapter, flag, value), needles, id=f"{command}{flag}={value}")
        for flag, value, needles in cases
        for command in ("predict", "eval")
    ]
    rows.append(
        pytest.param(
            inference("eval", lambda e: e.adapter, "--eval-size", "0"), ["--eval-size", ">= 1"], id="eval--eval-size=0"
        )
    )
    return rows


def predict(*args: str) -> Callable[[Env], list[str]]:
    """``predict`` with the trained adapter and ``args`` (``{tmp}`` stands for the row's folder)."""
    return lambda e: ["predict", "--adapter", str(e.adapter), *(a.format(tmp=e.tmp) for a in args)]


PREDICT_INPUT_ROWS = [
    pytest.param(predict("--file", "{tmp}/missing.txt"), ["--file", "missing.txt"], id="predict-file-missing"),
    pytest.param(predict("--file", "{tmp}"), ["--file"], id="predict-file-is-a-folder"),
    pytest.param(predict(), ["nothing to predict", "--file"], id="predict-no-texts"),
    pytest.param(
        inference("predict", lambda e: without(e.peft, "adapter_config.json", e), ""),
        ["adapter_config.json"],
        id="predict-empty-text-and-broken-adapter",  # the error alone: no warning for the empty text
    ),
]


def latin1_csv(e: Env) -> Path:
    """Labelled rows in latin-1, each text ending in 'café'."""
    rows = "".join(f'"{text} café",{label}\n' for text, label in toy_rows(8))
    path = e.tmp / "latin1.csv"
    path.write_bytes(("text,label\n" + rows).encode("latin-1"))
    return path


def latin1_txt(e: Env) -> Path:
    path = e.tmp / "latin1.txt"
    path.write_bytes("a café\nthé\n".encode("latin-1"))
    return path


def train(*args: str) -> Callable[[Env], list[str]]:
    """``train`` of the tiny model into ``{tmp}/out`` with ``args`` (``{csv}``: a latin-1 csv)."""

    def argv(e: Env) -> list[str]:
        values = {"tmp": e.tmp, "csv": latin1_csv(e) if any("{csv}" in a for a in args) else None}
        base = ["train", "--model", str(e.model), "--output", str(e.tmp / "out"), "--epochs", "1", "--no-progress"]
        return [*base, *(a.format(**values) for a in args)]

    return argv


ENCODING_ROWS = [
    pytest.param(predict("--encoding", "klingon", "x"), ["--encoding", "'klingon'"], id="predict-encoding-unknown"),
    pytest.param(
        inference("eval", lambda e: e.adapter, "--encoding", "klingon"), ["--encoding", "'klingon'"],
        id="eval-encoding-unknown",
    ),
    pytest.param(
        lambda e: ["predict", "--adapter", str(e.adapter), "--file", str(latin1_txt(e)), "--encoding", "utf-8"],
        ["latin1.txt", "not valid utf-8", "line 1", "--encoding"],
        id="predict-file-not-in-its-encoding",
    ),
    pytest.param(
        lambda e: ["eval", "--adapter", str(e.adapter), "--eval-file", str(latin1_csv(e)), "--encoding", "ascii"],
        ["latin1.csv", "not valid ascii", "line 2", "--encoding"],
        id="eval-file-not-in-its-encoding",
    ),
    pytest.param(train("--dataset", "{csv}", "--encoding", "klingon"), ["--encoding", "'klingon'"],
                 id="train-encoding-unknown"),
    pytest.param(train("--dataset", "{csv}", "--encoding", "utf-8"), ["latin1.csv", "--encoding"],
                 id="train-file-not-in-its-encoding"),
]  # fmt: skip

LORAPLUS_ROWS = [
    pytest.param(train("--loraplus-ratio", value), ["--loraplus-ratio", *needles], id=f"train-loraplus-ratio={value}")
    for value, needles in [("0", ["> 0", "got 0"]), ("-1", ["> 0", "got -1"]), ("x", ["a number", "'x'"]),
                           ("nan", ["a number"])]
]  # fmt: skip

EVAL_DATA_ROWS = [
    pytest.param(
        lambda e: ["eval", "--adapter", str(e.adapter), "--dataset", str(e.data), "--eval-file", str(e.numeric_csv)],
        ["--dataset", "--eval-file"],
        id="eval-dataset-and-eval-file",
    ),
]


def odd_jsonl(e: Env) -> Path:
    """Records that no task can read: neither text and label, nor tokens and tags, nor instructions."""
    path = e.tmp / "odd.jsonl"
    path.write_text("".join(json.dumps({"foo": f"x{i}", "bar": i}) + "\n" for i in range(8)))
    return path


TASK_ROWS = [
    pytest.param(lambda e: [*train()(e), "--train-file", str(odd_jsonl(e))],
                 ["no text column", "odd.jsonl", "--task token-cls reads tokens", "--task causal-lm reads instruction"],
                 id="train-data-for-no-task"),
]  # fmt: skip


def lm_file(name: str, content: str) -> Callable[[Env], str]:
    def make(e: Env) -> str:
        (e.tmp / name).write_text(content)
        return str(e.tmp / name)

    return make


def lm_train(make: Callable[[Env], str], *args: str) -> Callable[[Env], list[str]]:
    """``train --task causal-lm`` of the tiny model on the file ``make`` writes."""
    return lambda e: [*train("--task", "causal-lm", *args)(e), "--train-file", make(e)]


NO_OUTPUT = '[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d"}]'
LM_ROWS = [
    pytest.param(lm_train(lm_file("lm.json", NO_OUTPUT)), ["record 1 of lm.json", "'output'"],
                 id="lm-record-no-output"),
    pytest.param(lm_train(lm_file("lm.jsonl", '{"q": "a"}\n{"q": "b"}\n')), ["no usable columns", "causal-lm expects",
                 "seq-cls expects"], id="lm-no-usable-columns"),
    pytest.param(lm_train(lm_file("lm.json", "[1, 2]")), ["record 0 of lm.json", "not an object"], id="lm-not-records"),
    pytest.param(lm_train(lm_file("lm.json", "[{]")), ["lm.json", "not valid JSON"], id="lm-bad-json"),
    pytest.param(lm_train(lm_file("lm.json", NO_OUTPUT.replace('"input": "d"', '"output": "d"')), "--train-size", "2"),
                 ["--train-size 2", "for eval"], id="lm-train-size-leaves-no-eval"),
    pytest.param(lambda e: ["eval", "--model", str(e.model), "--task", "seq-cls", "--dataset", str(e.data)],
                 ["seq-cls", "--adapter"], id="eval-classifier-base-without-adapter"),
    pytest.param(lambda e: ["eval", "--adapter", str(e.adapter), "--task", "causal-lm"], ["--task", "adapter"],
                 id="eval-task-with-adapter"),
    pytest.param(lambda e: ["eval", "--dataset", str(e.data)], ["--adapter", "--model"], id="eval-no-model"),
    pytest.param(lambda e: ["generate", "--adapter", str(e.adapter), "x"], ["seq-cls", "causal-lm"],
                 id="generate-classifier-adapter"),
    pytest.param(lambda e: ["generate", "--model", str(e.model), "--top-p", "2", "x"], ["--top-p"],
                 id="generate-top-p"),
    pytest.param(lambda e: ["generate", "--model", str(e.model), "--temperature", "hot", "x"], ["--temperature"],
                 id="generate-temperature-not-a-number"),
]  # fmt: skip


def run_holding_data(e: Env) -> Path:
    """A finished run folder ``{tmp}/run`` that holds its own training data (``run/data``)."""
    run = e.tmp / "run"
    shutil.copytree(e.data, run / "data")
    (run / "run_config.json").write_text("{}")
    return run


def overwriting(command: str, data: Callable[[Env], Path], output: Callable[[Env], str]) -> Callable[[Env], list[str]]:
    """``command --dataset DATA --output OUTPUT --overwrite`` on the tiny model."""
    return lambda e: [command, "--model", str(e.model), "--dataset", str(data(e)), "--output", output(e),
                      "--overwrite", "--epochs", "1", "--no-progress"]  # fmt: skip


OVERWRITE_ROWS = [
    pytest.param(overwriting("train", lambda e: run_holding_data(e) / "data", lambda e: str(e.tmp / "run")),
                 ["--output", "holds --dataset", "--overwrite would delete"], id="train-overwrite-holds-its-data"),
    pytest.param(overwriting("compare", lambda e: run_holding_data(e) / "data", lambda e: str(e.tmp / "run")),
                 ["--output", "holds --dataset", "--overwrite would delete"], id="compare-overwrite-holds-its-data"),
    pytest.param(overwriting("train", lambda e: e.data, lambda e: "."),
                 ["--output .", "current directory"], id="train-overwrite-the-current-directory"),
]  # fmt: skip

NUMBER_ROWS = [
    *[pytest.param(lambda e, f=flag, v=value: ["compare", "--auto-rank", f, v, "--output", str(e.tmp / "c")],
                   [flag, "finite", repr(value)], id=f"compare{flag}={value}")
      for flag in ("--tolerance", "--first-budget") for value in ("nan", "inf")],
    *[pytest.param(lambda e, f=flag, v=value: ["generate", "--model", str(e.model), f, v, "x"], [flag, needle],
                   id=f"generate{flag}={value}")
      for flag, value, needle in [("--temperature", "nan", "finite"), ("--temperature", "inf", "finite"),
                                  ("--top-p", "nan", "finite"), ("--seed", str(2**70), "2**64 - 1")]],
    pytest.param(predict("a \udcff text"), ["text argument 1", "not valid UTF-8", "--file", "--encoding"],
                 id="predict-argument-not-utf8"),
    pytest.param(lambda e: [*train("--dataset", str(e.data))(e), "--output", str(e.tmp / ("o" * 300))],
                 ["File name too long", "shorter path"], id="train-output-name-too-long"),
]  # fmt: skip

BAD = [*_artifact_rows(), *_option_rows(), *PREDICT_INPUT_ROWS, *ENCODING_ROWS, *LORAPLUS_ROWS, *EVAL_DATA_ROWS,
       *TASK_ROWS, *LM_ROWS, *OVERWRITE_ROWS, *NUMBER_ROWS]  # fmt: skip


@pytest.mark.parametrize("argv,needles", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, needles, env, capsys):
    args = argv(env)
    before = snapshot(env.tmp, env.adapter.parent, env.peft)
    code, out, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert out == ""
    assert snapshot(env.tmp, env.adapter.parent, env.peft) == before


# ------------------------------------------------------------------------------ good PEFT adapters
def test_peft_saved_adapter_predicts_and_evaluates(env, capsys):
    """An adapter saved by PEFT (no loratune.json): labels from its head, base model from its config."""
    long_text = "a great film " * 100  # 300 tokens: more than the model's 128 positions
    code, out, err = run(["predict", "--adapter", str(env.peft), "--json", long_text, "dull"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [set(r["probs"]) for r in records] == [{"0", "1"}] * 2
    code, out, err = run(["eval", "--adapter", str(env.peft), "--eval-file", str(env.numeric_csv), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["num_examples"] == 12


def test_full_model_predicts_without_library_lines(env, capsys):
    code, out, err = run(["predict", "--adapter", str(full_model(env)), "a great film"], capsys)
    assert code == 0 and len(out.splitlines()) == 1
    assert err == ""  # no "Loading weights" bar from transformers


# ------------------------------------------------------------------------------ predict's inputs
def test_predict_file_keeps_one_output_per_line_and_warns_of_blank_ones(env, capsys):
    texts = env.tmp / "texts.txt"
    texts.write_bytes(b"great fun\r\n\r\nterrible plot\n   \nlast, no newline")
    code, out, err = run(["predict", "--adapter", str(env.adapter), "--file", str(texts), "--json"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["line"], r["text"]) for r in records] == [
        (1, "great fun"), (2, ""), (3, "terrible plot"), (4, "   "), (5, "last, no newline")
    ]  # fmt: skip
    assert err.splitlines() == [
        f"warning: line {n} of {texts} is empty; its prediction is for an empty text" for n in (2, 4)
    ]
    code, out, _ = run(["predict", "--adapter", str(env.adapter), "--file", str(texts)], capsys)
    assert len(out.splitlines()) == 5  # plain output too: one line per input line


def test_predict_empty_argument_and_stdin_are_numbered(env, capsys, monkeypatch):
    code, out, err = run(["predict", "--adapter", str(env.adapter), "--json", "fine", "", "dull"], capsys)
    assert code == 0, err
    assert [(r["line"], r["text"]) for r in map(json.loads, out.splitlines())] == [(1, "fine"), (2, ""), (3, "dull")]
    assert err == "warning: text argument 2 is empty; its prediction is for an empty text\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\nsuperb\n")))
    code, out, err = run(["predict", "--adapter", str(env.adapter), "--json", "--file", "-"], capsys)
    assert code == 0, err
    assert [(r["line"], r["text"]) for r in map(json.loads, out.splitlines())] == [(1, ""), (2, "superb")]
    assert err == "warning: line 1 of stdin is empty; its prediction is for an empty text\n"


# ------------------------------------------------------------------------------------- encodings
def test_latin1_eval_file_warns_in_one_line_unless_its_encoding_is_given(env, capfd):
    path = latin1_csv(env)
    code = main(["eval", "--adapter", str(env.adapter), "--eval-file", str(path)])
    err = [line for line in capfd.readouterr().err.splitlines() if not line.startswith("eval:")]  # its bar
    assert code == 0
    assert err == [
        f"warning: {path} is not valid UTF-8 (line 2 has byte 0xe9): undecodable bytes become U+FFFD; "
        "pass --encoding (e.g. latin-1) to read it exactly"
    ]  # one line per read of the file, and no "Failed to read file" line from datasets
    assert main(["eval", "--adapter", str(env.adapter), "--eval-file", str(path), "--encoding", "latin-1"]) == 0
    assert [line for line in capfd.readouterr().err.splitlines() if not line.startswith("eval:")] == []


def test_latin1_predict_file_is_exact_with_its_encoding(env, capsys):
    path = latin1_txt(env)
    code, out, err = run(["predict", "--adapter", str(env.adapter), "--json", "--file", str(path)], capsys)
    assert code == 0 and [json.loads(x)["text"] for x in out.splitlines()] == ["a caf\ufffd", "th\ufffd"]
    assert err.splitlines() == [
        f"warning: {path} is not valid UTF-8 (line 1 has byte 0xe9): undecodable bytes become U+FFFD; "
        "pass --encoding (e.g. latin-1) to read it exactly"
    ]
    args = ["predict", "--adapter", str(env.adapter), "--json", "--file", str(path), "--encoding", "latin-1"]
    code, out, err = run(args, capsys)
    assert code == 0 and err == ""
    assert [json.loads(x)["text"] for x in out.splitlines()] == ["a café", "thé"]


def test_eval_file_takes_eval_size(env, capsys):
    args = ["eval", "--adapter", str(env.adapter), "--eval-file", str(env.data / "test.csv"), "--eval-size", "5"]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["num_examples"] == 5
    assert record["data"] == str(env.data / "test.csv")  # the file, read once, not "train: F, eval: F"


# --------------------------------------------------------------------------------- eval's data
def test_eval_on_a_single_class_is_scored_on_that_class(env, capsys):
    path = write_csv(env.tmp / "positive.csv", [row for row in toy_rows(12) if row[1] == "positive"])
    code, out, err = run(["eval", "--adapter", str(env.adapter), "--eval-file", str(path)], capsys)
    assert code == 0, err
    assert "macro-F1" in out and "(over the 1 class in the data, of 2)" in out
    code, out, err = run(["eval", "--adapter", str(env.adapter), "--eval-file", str(path), "--json"], capsys)
    metrics = json.loads(out)
    recall = metrics["accuracy"]  # every example is positive
    expected = 2 * recall / (1 + recall) if recall else 0.0  # precision is 1 when positive is predicted
    assert metrics["macro_f1"] == pytest.approx(expected)
    code, out, _ = run(["eval", "--adapter", str(env.adapter), "--eval-file", str(env.data / "test.csv")], capsys)
    assert code == 0 and "class in the data" not in out  # both classes: no note


# -------------------------------------------------------------------------------- what train writes
def test_train_writes_files_with_the_umask(artifacts):
    from loratune.fsutil import umask

    run_dir = artifacts["adapter"].parent
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()}
    assert {"adapter/adapter_model.safetensors", "summary.json"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask()}, modes  # safetensors files too, not 0600


def test_train_prints_no_future_warning(artifacts):
    """transformers 5.24 renamed is_gradient_checkpointing and gradient_checkpointing_enable."""
    caught = artifacts["train_warnings"]  # the session's train run
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_generate_with_a_tiny_temperature_is_greedy(tiny_llama_bf16_dir, capsys):
    """A temperature of 1e-45 overflows the logits it divides: it samples as its limit, greedy, does."""
    base = ["generate", "--model", str(tiny_llama_bf16_dir), "--max-new-tokens", "3", "--device", "cpu", "hello"]
    assert main([*base, "--temperature", "1e-45", "--seed", "1"]) == 0, capsys.readouterr().err
    tiny = capsys.readouterr().out
    assert main(base) == 0
    assert tiny == capsys.readouterr().out


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary(env, capsys, monkeypatch):
    import errno
    import os

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, out, err = run(train("--dataset", str(env.data), "--max-length", "64")(env), capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: No space left on device: ") and "free some space" in err
    assert str(env.tmp / "out") in err and "Traceback" not in err
    assert not [p for p in env.tmp.rglob("*") if ".tmp" in p.name]


def test_a_library_error_that_carries_a_disk_error_is_one_line(env, capsys, monkeypatch):
    from safetensors import SafetensorError

    import loratune.merge

    def full(*args, **kwargs) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(loratune.merge, "merge_to_folder", full)
    code, out, err = run(["merge", "--adapter", str(env.adapter), "--output", str(env.tmp / "merged")], capsys)
    assert (
        code == 2
        and out == ""
        and err == "error: No space left on device; free some space on that disk, or pass a folder on another\n"
    )
