"""Which task the data is for, when --task is not given."""

from __future__ import annotations

import json

import pytest

from loratune.tasks.detect import guess_task
from loratune.train.config import RunConfig, build_config, with_task

CONLL = "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\nPeter NNP B-NP B-PER\n"


@pytest.mark.parametrize(
    ("name", "content", "task"),
    [
        ("eng.train", CONLL, "token-cls"),
        ("ner.txt", "Paris\tB-LOC\nis\tO\n", "token-cls"),
        ("ner.jsonl", json.dumps({"tokens": ["EU"], "ner_tags": ["B-ORG"]}) + "\n", "token-cls"),
        ("ner.json", json.dumps([{"tokens": ["EU"], "tags": ["B-ORG"]}]), "token-cls"),
        ("alpaca.json", json.dumps([{"instruction": "Say hi", "input": "", "output": "hi"}]), "causal-lm"),
        ("alpaca.jsonl", json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n", "causal-lm"),
        ("shakespeare.txt", "First Citizen:\nBefore we proceed any further, hear me speak.\n", "causal-lm"),
        ("lines.jsonl", json.dumps({"text": "just text"}) + "\n", "causal-lm"),
        ("reviews.csv", "text,label\ngreat,1\n", "seq-cls"),
        ("reviews.jsonl", json.dumps({"text": "great", "label": 1}) + "\n", "seq-cls"),
        ("two-words.txt", "a great film\nan awful film\n", "causal-lm"),  # words, not token-tag lines
    ],
)
def test_the_task_follows_the_data(tmp_path, name, content, task):
    path = tmp_path / name
    path.write_text(content)
    assert guess_task(None, str(path)).task == task
    assert guess_task(str(path), None).task == task


def test_a_long_json_list_is_recognised_from_its_first_record(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"instruction": "x" * 1000, "output": "y"}] * 2000))
    assert path.stat().st_size > 1 << 20 and guess_task(None, str(path)).task == "causal-lm"


def test_a_folder_is_judged_by_its_first_data_file(tmp_path):
    (tmp_path / "eng.train").write_text(CONLL)
    (tmp_path / "README").write_text("about")
    assert guess_task(str(tmp_path), None).task == "token-cls"


def test_no_data_and_unknown_hub_names_are_seq_cls_and_known_ner_sets_token_cls(monkeypatch):
    monkeypatch.setattr("loratune.tasks.detect.hub_reachable", lambda: False)
    assert guess_task(None, None).task == "seq-cls"
    assert guess_task("tweets", None).task == "seq-cls"
    assert guess_task("imdb", None).task == "seq-cls"
    assert guess_task("conll2003", None).task == "token-cls"
    assert guess_task("eriktks/conll2003", None).task == "token-cls"


def test_build_config_infers_and_says_so_unless_the_task_is_given(tmp_path, capsys):
    path = tmp_path / "eng.train"
    path.write_text(CONLL)
    assert build_config(train_file=str(path)).task == "token-cls"
    assert "task: token-cls (inferred: eng.train has one token and its tag per line" in capsys.readouterr().out
    assert build_config(train_file=str(path), task="seq-cls").task == "seq-cls"
    assert "inferred" not in capsys.readouterr().out
    assert build_config().task == "seq-cls" and capsys.readouterr().out == ""  # the demo: nothing to say
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\ngreat,1\n")
    assert build_config(train_file=str(table)).task == "seq-cls" and capsys.readouterr().out == ""
    assert with_task(RunConfig(train_file=str(path))).task == "token-cls"
