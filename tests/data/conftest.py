"""Fixtures for the data tests: a tiny offline BERT tokenizer and the shared real-data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

WORDS = [
    "the",
    "a",
    "an",
    "movie",
    "film",
    "was",
    "is",
    "it",
    "this",
    "that",
    "i",
    "not",
    "very",
    "good",
    "bad",
    "great",
    "awful",
    "boring",
    "fun",
    "plot",
    "acting",
    "and",
    "but",
    "so",
    "too",
    "really",
    "loved",
    "hated",
    "best",
    "worst",
    "story",
    "ending",
]


@pytest.fixture(scope="session", autouse=True)
def _datasets_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Keep the Arrow caches that ``datasets.load_dataset`` writes for the many tiny test files out of
    the user's ~/.cache."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
        yield


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A BERT WordPiece tokenizer over a 40-word vocabulary, built offline from a vocab.txt."""
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tinytok")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository root; the test is skipped when it is absent."""
    path = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent")
    return path
