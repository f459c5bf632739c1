"""Tagging data (token-cls): CoNLL and JSON readers, folders, hub-style ClassLabel tags, splits, errors."""

from __future__ import annotations

import json
import logging

import datasets
import pytest

from loratune.data import load, tagging
from loratune.data.tagging import inside_tag, load_tagging, ordered_labels, read_conll, sentences_from_dataset
from loratune.errors import DataError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O
BRUSSELS\tB-LOC
1996-08-22\tO
"""


def conll_text(sentences: list[list[tuple[str, str]]]) -> str:
    return "\n\n".join("\n".join(f"{w} X {t}" for w, t in s) for s in sentences) + "\n"


def test_conll_last_column_any_width_docstart_and_blank_lines() -> None:
    s = read_conll(CONLL, "eng.train")
    assert s.tokens == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"]]
    assert s.tags == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]
    assert s.where == ["line 3", "line 8", "line 12"]  # the first word line of each sentence


@pytest.mark.parametrize(
    "text,needle",
    [
        ("EU B-ORG\nrejects\nGerman B-MISC\n", "eng.train:2"),  # one column: the tag is missing
        ("EU B-ORG\n\n\n   \nx O\nlonely\n", "eng.train:6"),
    ],
)
def test_conll_line_without_a_tag_names_file_and_line(text, needle) -> None:
    with pytest.raises(DataError, match=needle):
        read_conll(text, "eng.train")


def test_conll_without_sentences_is_an_error() -> None:
    with pytest.raises(DataError, match="no sentences"):
        read_conll("-DOCSTART- -X- O\n\n\n", "empty.conll")


def test_json_and_jsonl_records_and_named_columns(tmp_path) -> None:
    rows = [
        {"tokens": ["Angela", "Merkel", "spoke"], "ner_tags": ["B-PER", "I-PER", "O"]},
        {"tokens": ["in", "Paris"], "ner_tags": ["O", "B-LOC"]},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.json").write_text(json.dumps(rows))
    other = [{"words": r["tokens"], "ents": r["ner_tags"]} for r in rows]
    (tmp_path / "other.jsonl").write_text("\n".join(json.dumps(r) for r in other))
    for name, columns in (("train.jsonl", {}), ("test.json", {}), ("other.jsonl", {"label_column": "ents"})):
        s = tagging.read_tagged_file(tmp_path / name, columns.get("text_column"), columns.get("label_column"))
        assert s.tokens == [r["tokens"] for r in rows] and s.tags == [r["ner_tags"] for r in rows]
    with pytest.raises(DataError, match=r"no tags column found in other\.jsonl"):
        tagging.read_tagged_file(tmp_path / "other.jsonl")


@pytest.mark.parametrize(
    "lines,needle",
    [
        (
            ['{"tokens": ["a", "b"], "tags": ["O", "O"]}', '{"tokens": ["a", "b"], "tags": ["O"]}'],
            "t.jsonl line 2: 2 words in 'tokens' but 1 tags",
        ),
        (['{"tokens": "a b", "tags": ["O", "O"]}'], "t.jsonl line 1: 'tokens' must be a list"),
        (['{"tokens": ["a"], "tags": ["O"]}', "", '{"tokens": ["a"]}'], "t.jsonl line 3: no 'tags' field"),
        (['{"tokens": ["a"], "tags": ["O"]}', "{not json"], "t.jsonl:2: not valid JSON"),
        (['{"tokens": ["a", null], "tags": ["O", "O"]}'], "t.jsonl line 1: words and tags must be"),
    ],
    ids=["lengths-differ", "not-a-list", "missing-field", "bad-json", "null-word"],
)
def test_malformed_jsonl_record_names_file_and_line(tmp_path, lines, needle) -> None:
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=needle):
        tagging.read_tagged_file(tmp_path / "t.jsonl")


def test_malformed_json_list_names_the_record_index(tmp_path) -> None:
    rows = [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O"]}]
    (tmp_path / "t.json").write_text(json.dumps(rows, indent=1))
    with pytest.raises(DataError, match=r"t\.json record 1: 2 words"):
        tagging.read_tagged_file(tmp_path / "t.json")


def conll2003_like(n: int, offset: int = 0) -> datasets.Dataset:
    """A dataset built like the hub's conll2003: tags as ids of a Sequence(ClassLabel)."""
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {
        "id": [str(i) for i in range(n)],
        "tokens": [["Peter", "Blackburn", "visits", "Bonn", str(i + offset)] for i in range(n)],
        "ner_tags": [[1, 2, 0, 5, 0] for _ in range(n)],
    }
    return datasets.Dataset.from_dict(rows, features=features)


def test_classlabel_tag_ids_map_through_the_feature_names() -> None:
    s = sentences_from_dataset(conll2003_like(2), "conll2003 [train]")
    assert s.tags == [["B-PER", "I-PER", "O", "B-LOC", "O"]] * 2
    assert s.tokens[1] == ["Peter", "Blackburn", "visits", "Bonn", "1"]


def test_hub_dataset_goes_through_the_same_reader(monkeypatch) -> None:
    dsd = datasets.DatasetDict(train=conll2003_like(20), validation=conll2003_like(4, 100), test=conll2003_like(5))
    monkeypatch.setattr(load, "load_hub", lambda name, revision=None: dsd)
    data = load_tagging("conll2003", seed=0)
    assert data.labels == ["O", "B-LOC", "B-PER", "I-PER"]  # the tags train has, O first
    assert (len(data.train), len(data.val), len(data.eval)) == (20, 4, 5)
    assert data.selection == "the dataset's validation split (conll2003 [validation])"
    assert data.eval[0]["tags"] == [2, 3, 0, 1, 0]


def test_folder_with_conll2003_names(tmp_path) -> None:
    sentence = [("Peter", "B-PER"), ("visits", "O"), ("Bonn", "B-LOC")]
    (tmp_path / "eng.train").write_text(conll_text([sentence] * 10))
    (tmp_path / "eng.testa").write_text(conll_text([sentence] * 3))
    (tmp_path / "eng.testb").write_text(conll_text([sentence] * 4))
    data = load_tagging(str(tmp_path), seed=0)
    assert (len(data.train), len(data.val), len(data.eval)) == (10, 3, 4)
    assert data.source.endswith("(eng.train + eng.testb + eng.testa)")
    assert data.labels == ["O", "B-LOC", "B-PER"]
    held = load_tagging(str(tmp_path), seed=0, val_size=2)  # validation out of train: testa is not read
    assert (len(held.train), len(held.val), len(held.eval)) == (8, 2, 4)
    assert held.source.endswith("(eng.train + eng.testb)") and "held out of the train split" in held.selection


def test_train_and_eval_files_hold_out_validation_like_seq_cls(tmp_path) -> None:
    sentence = [("Peter", "B-PER"), ("visits", "O")]
    (tmp_path / "a.conll").write_text(conll_text([sentence] * 40))
    (tmp_path / "b.conll").write_text(conll_text([sentence] * 7))
    files = {"train_file": str(tmp_path / "a.conll"), "eval_file": str(tmp_path / "b.conll")}
    data = load_tagging(seed=0, **files)
    assert (len(data.train), len(data.val), len(data.eval)) == (36, 4, 7)  # 10 % of train chooses
    data = load_tagging(seed=0, val_size=0, train_size=10, eval_size=5, **files)
    assert (len(data.train), data.val, len(data.eval)) == (10, None, 5)
    data = load_tagging(seed=0, train_file=files["train_file"])  # no eval file: 10 % carved off for eval
    assert (len(data.train), data.val, len(data.eval)) == (36, None, 4)
    assert "no separate test split" in data.selection


def test_eval_tags_unknown_to_train_or_adapter_are_an_error(tmp_path) -> None:
    (tmp_path / "a.conll").write_text(conll_text([[("Peter", "B-PER"), ("x", "O")]] * 5))
    (tmp_path / "b.conll").write_text(conll_text([[("Bonn", "B-LOC"), ("x", "O")]] * 2))
    with pytest.raises(DataError, match=r"b.conll has tags that the train data \(a.conll\) has not: 'B-LOC'"):
        load_tagging(train_file=str(tmp_path / "a.conll"), eval_file=str(tmp_path / "b.conll"), val_size=0)
    path = str(tmp_path / "b.conll")
    with pytest.raises(DataError, match=r"b\.conll has tags that the adapter knows not: 'B-LOC'"):
        load_tagging(train_file=path, eval_file=path, labels=["O", "B-PER"], val_size=0)


def test_tweets_and_missing_data_are_refused_with_the_fix() -> None:
    with pytest.raises(DataError, match="tweets is text-classification data"):
        load_tagging("tweets")
    with pytest.raises(DataError, match="token-cls needs tagged data"):
        load_tagging()


def test_label_all_tokens_gives_train_its_inside_tags(tmp_path) -> None:
    (tmp_path / "a.conll").write_text(
        conll_text([[("Peter", "B-PER"), ("Blackburn", "I-PER"), ("x", "O"), ("Bonn", "B-LOC")]] * 5)
    )
    data = load_tagging(train_file=str(tmp_path / "a.conll"), seed=0, label_all_tokens=True, eval_size=1)
    assert data.labels == ["O", "B-LOC", "B-PER", "I-PER"]
    row = data.train[0]
    # B-PER -> I-PER, I-PER -> I-PER, O -> O, B-LOC -> B-LOC (no I-LOC in the tag list)
    assert row["tags"] == [2, 3, 0, 1] and row["inner_tags"] == [3, 3, 0, 1]
    assert "inner_tags" not in data.eval.column_names  # scoring is at first sub-tokens only


def test_labels_order_and_inside_tag() -> None:
    assert ordered_labels({"I-PER", "B-PER", "O", "B-LOC"}) == ["O", "B-LOC", "B-PER", "I-PER"]
    assert [inside_tag(t) for t in ("B-PER", "I-PER", "O", "PER")] == ["I-PER", "I-PER", "O", "PER"]


def test_tags_that_are_not_iob_warn_once(tmp_path, caplog) -> None:
    (tmp_path / "a.conll").write_text(conll_text([[("Peter", "PER"), ("x", "O"), ("Bonn", "S-LOC")]] * 5))
    with caplog.at_level(logging.WARNING, logger="loratune"):
        load_tagging(train_file=str(tmp_path / "a.conll"), seed=0, eval_size=1)
    warned = [r for r in caplog.records if "not IOB" in r.getMessage()]
    assert len(warned) == 1 and "PER, S-LOC" in warned[0].getMessage()


def test_shared_conll2003_reads_with_its_dev_split(shared_data) -> None:
    data = load_tagging(str(shared_data / "conll2003"), seed=42)
    assert (len(data.train), len(data.val), len(data.eval)) == (14041, 3250, 3453)
    assert data.labels == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert data.train[0]["tokens"] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert sum(len(t) for t in data.eval["tokens"]) == 46435  # CoNLL-2003 test: 46,435 tokens


def test_conll_lines_of_another_width_are_refused_naming_the_first():
    """A line without the NER column would otherwise train on the chunk column as its tag (B-NP, B-VP)."""
    text = "EU NNP B-NP B-ORG\nrejects VBZ B-VP\nGerman JJ B-NP B-MISC\n"
    with pytest.raises(DataError, match=r"eng.train:2: 3 columns where line 1 has 4"):
        read_conll(text, "eng.train")
    later = "EU NNP B-NP B-ORG\n\nPeter NNP B-PER\n"  # in a later sentence of the same document too
    with pytest.raises(DataError, match=r"eng.train:3: 3 columns where line 1 has 4"):
        read_conll(later, "eng.train")


@pytest.mark.parametrize("tags", [[0, 3], [0, "B-PER"]], ids=["ids", "ids-and-names"])
def test_json_tag_ids_without_names_are_refused_naming_the_record(tmp_path, tags) -> None:
    """As strings "0".."8" the O class would be scored as an entity type."""
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps({"tokens": ["Peter", "Bonn"], "tags": ["O", "O"]})
        + "\n"
        + json.dumps({"tokens": ["Anna", "Rome"], "tags": tags})
        + "\n"
    )
    with pytest.raises(DataError, match=r"train.jsonl line 2: tag 0 is a number"):
        load_tagging(train_file=path)
