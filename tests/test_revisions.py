"""--revision and --dataset-revision: passed to the hub loaders, recorded, and reused by eval/predict.

No network: ``from_pretrained`` and ``datasets.load_dataset`` are replaced by stand-ins that note the
revision they are given and serve the tiny local model and the toy data.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import toy_rows
from loratune.cli import main
from loratune.errors import DataError

HUB_MODEL, HUB_DATA = "acme/tiny-bert", "acme/reviews"


@pytest.fixture
def hub(tiny_model_dir, monkeypatch) -> list[tuple[str, str, str | None]]:
    """Serve HUB_MODEL and HUB_DATA as if from the hub; yields the (kind, name, revision) of each load."""
    loads: list[tuple[str, str, str | None]] = []
    real = {
        "model": AutoModelForSequenceClassification.from_pretrained,
        "tokenizer": AutoTokenizer.from_pretrained,
        "data": datasets.load_dataset,
    }

    def loader(kind: str):
        def load(name, *args, revision=None, **kwargs):
            loads.append((kind, str(name), revision))
            return real[kind](tiny_model_dir if name == HUB_MODEL else name, *args, **kwargs)

        return load

    def load_dataset(path, *args, revision=None, **kwargs):
        if "data_files" in kwargs:  # a local file
            return real["data"](path, *args, **kwargs)
        loads.append(("data", "/".join(filter(None, [path, *args])), revision))
        split = {name: toy_rows(n, seed) for name, n, seed in (("train", 64, 1), ("test", 16, 2))}
        return datasets.DatasetDict(
            {k: datasets.Dataset.from_dict({"text": [t for t, _ in v], "label": [lab for _, lab in v]})
             for k, v in split.items()}
        )  # fmt: skip

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", loader("model"))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", loader("tokenizer"))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return loads


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "--output", str(out), "--max-length", "32", "--batch-size", "8", "--max-steps", "2",
            "--precision", "fp32", "--no-progress", *extra]  # fmt: skip


def test_train_loads_at_the_revisions_and_records_them_for_eval_and_predict(hub, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _train(out, "--model", HUB_MODEL, "--revision", "v1.0", "--dataset", HUB_DATA, "--dataset-revision", "abc")
    assert main(argv) == 0, capsys.readouterr().err
    assert set(hub) == {("tokenizer", HUB_MODEL, "v1.0"), ("model", HUB_MODEL, "v1.0"), ("data", HUB_DATA, "abc")}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["model_revision"], summary["dataset_revision"]) == ("v1.0", "abc")
    info = json.loads((out / "adapter" / "loratune.json").read_text())
    assert info["base_model_revision"] == "v1.0" and info["data"]["dataset_revision"] == "abc"

    hub.clear()  # eval: the base model and the data at the revisions the run recorded
    assert main(["eval", "--adapter", str(out / "adapter")]) == 0, capsys.readouterr().err
    assert ("model", HUB_MODEL, "v1.0") in hub and ("data", HUB_DATA, "abc") in hub
    assert all(revision is None for kind, _, revision in hub if kind == "tokenizer")  # the adapter's own copy
    hub.clear()  # predict: --revision overrides the recorded one
    assert main(["predict", "--adapter", str(out / "adapter"), "--revision", "v2.0", "great fun"]) == 0
    assert [load for load in hub if load[0] == "model"] == [("model", HUB_MODEL, "v2.0")]


def test_without_revisions_nothing_is_pinned_or_recorded(hub, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(out, "--model", HUB_MODEL, "--dataset", HUB_DATA)) == 0, capsys.readouterr().err
    assert hub and all(revision is None for _, _, revision in hub)
    info = json.loads((out / "adapter" / "loratune.json").read_text())
    assert info["base_model_revision"] is None and info["data"]["dataset_revision"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "{model}", "--revision", "v1"], "error: --revision v1 pins a model on the Hugging Face hub, "
         "and '{model}' is a local folder; drop --revision, or pass a hub id"),
        (["--model", "minilm", "--revision", "v1"], "error: --revision v1 pins a model on the Hugging Face hub, and "
         "'minilm' is a packaged copy; pass --model sentence-transformers/all-MiniLM-L6-v2 for the hub's, or drop "
         "--revision"),
        (["--model", "{model}", "--dataset-revision", "v1"], "error: --dataset-revision v1 pins a dataset on the "
         "Hugging Face hub, and this data is local (files, or tweets); drop --dataset-revision"),
    ],
)  # fmt: skip
def test_a_revision_for_a_local_model_or_data_is_refused(flags, message, tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    flags = [f.format(model=tiny_model_dir) for f in flags]
    capsys.readouterr()
    assert main(_train(out, "--dataset", str(toy_data), *flags)) == 2
    assert capsys.readouterr().err.strip() == message.format(model=tiny_model_dir)
    assert not out.exists()


def test_a_whole_model_has_no_base_revision(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["predict", "--adapter", str(tmp_path), "--revision", "v1", "text"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --revision pins a base model, and {tmp_path} is a whole model; drop --revision"
    )


def test_the_dataset_revision_reaches_the_hub_loader_and_local_data_refuses_one(hub, toy_data):
    from loratune.data.labelled_texts import load_text_classification

    data = load_text_classification(HUB_DATA, dataset_revision="r1")
    assert len(data.eval) == 16 and hub == [("data", HUB_DATA, "r1")]
    load_text_classification(HUB_DATA)
    assert hub[-1] == ("data", HUB_DATA, None)
    for local in (str(toy_data), "tweets"):
        with pytest.raises(DataError, match=r"is local \(files, or tweets\); drop --dataset-revision"):
            load_text_classification(local, dataset_revision="r1")
