"""Tokenising without padding, dynamic padding, length-grouped batches and the padding they save."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from loratune.data import (
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    load_text_classification,
    padding_fraction,
    tokenize_dataset,
)
from loratune.errors import DataError

TEXTS = ["the movie was good", "bad", "the plot and the acting were really very boring and too long", "fun"]


def small_dataset() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": TEXTS, "label": [1, 0, 0, 1]})


def imdb_like_lengths(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Review lengths like IMDb's in tokens (median ~230, long tail), truncated to 256."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=5.45, sigma=0.7, size=n).astype(int) + 10, 10, 256)


def random_batches(n: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


# --- tokenize_dataset ------------------------------------------------------------------------------


def test_tokenize_truncates_without_padding(tiny_tokenizer) -> None:
    tok = tokenize_dataset(small_dataset(), tiny_tokenizer, max_length=8)
    assert set(tok.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels", "length"}
    lengths = tok["length"][:]
    assert lengths == [len(ids) for ids in tok["input_ids"][:]]
    assert lengths[1] == 3 and lengths[2] == 8  # [CLS] bad [SEP]; truncated to max_length
    assert len(set(lengths)) > 1  # no padding
    assert tok["labels"][:] == [1, 0, 0, 1]
    assert all(all(m == 1 for m in mask) for mask in tok["attention_mask"][:])


def test_tokenize_without_labels_and_errors(tiny_tokenizer) -> None:
    tok = tokenize_dataset(datasets.Dataset.from_dict({"text": ["good", "bad"]}), tiny_tokenizer, 16)
    assert "labels" not in tok.column_names
    with pytest.raises(DataError, match="max_length must be >= 1"):
        tokenize_dataset(small_dataset(), tiny_tokenizer, 0)
    with pytest.raises(DataError, match="column 'text' not found"):
        tokenize_dataset(datasets.Dataset.from_dict({"body": ["x"]}), tiny_tokenizer, 8)


def test_tokenize_leaves_no_cache_files_in_the_data_folder(tmp_path: Path, tiny_tokenizer) -> None:
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS * 5)]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "test.csv", index=False)
    data = load_text_classification(str(tmp_path))
    tokenize_dataset(data.train, tiny_tokenizer, 16)
    tokenize_dataset(data.eval, tiny_tokenizer, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv", "train.csv"]
    assert data.train.cache_files == []


# --- DynamicPaddingCollator ------------------------------------------------------------------------


def test_collator_pads_to_the_longest_in_each_batch(tiny_tokenizer) -> None:
    tok = tokenize_dataset(small_dataset(), tiny_tokenizer, max_length=32)
    collate = DynamicPaddingCollator(tiny_tokenizer)
    batch = collate([tok[0], tok[1]])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (2, 6)  # the longer one: [CLS] the movie was good [SEP]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]
    assert batch["input_ids"][1, 3:].tolist() == [tiny_tokenizer.pad_token_id] * 3
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    loader = DataLoader(tok, batch_size=4, collate_fn=collate)
    (full,) = list(loader)
    assert full["input_ids"].shape == (4, max(tok["length"][:]))
    assert collate([tok[1], tok[3]])["input_ids"].shape == (2, 3)
    assert DynamicPaddingCollator(tiny_tokenizer, pad_to_multiple_of=8)([tok[1]])["input_ids"].shape == (1, 8)
    assert DynamicPaddingCollator(tiny_tokenizer, max_length=12)([tok[0], tok[1]])["input_ids"].shape == (2, 12)


def test_collator_needs_a_pad_token(tiny_tokenizer) -> None:
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    with pytest.raises(DataError, match="no pad token"):
        DynamicPaddingCollator(tokenizer)


# --- LengthGroupedBatchSampler ---------------------------------------------------------------------


def flat(batches) -> list[int]:
    return [i for b in batches for i in b]


def test_train_order_covers_every_index_and_groups_lengths() -> None:
    lengths = imdb_like_lengths(1000)
    sampler = LengthGroupedBatchSampler(lengths, 16, shuffle=True, seed=7)
    batches = list(sampler)
    assert sorted(flat(batches)) == list(range(1000))
    assert len(batches) == len(sampler) == 63
    assert max(lengths[batches[0]]) == lengths.max()  # the longest batch goes first
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 15


def test_train_order_is_deterministic_per_seed_and_epoch() -> None:
    lengths = imdb_like_lengths(500)
    a = LengthGroupedBatchSampler(lengths, 8, shuffle=True, seed=1)
    b = LengthGroupedBatchSampler(lengths, 8, shuffle=True, seed=1)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again gives the same epoch
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    assert list(LengthGroupedBatchSampler(lengths, 8, shuffle=True, seed=2)) != first


def test_resume_mid_epoch() -> None:
    lengths = imdb_like_lengths(300)
    sampler = LengthGroupedBatchSampler(lengths, 10, shuffle=True, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start(7)
    assert len(sampler) == len(full) - 7
    assert list(sampler) == full[7:]
    assert list(sampler) == full  # the skip applies once, to the resumed pass
    fresh = LengthGroupedBatchSampler(lengths, 10, shuffle=True, seed=3)  # e.g. a new process
    fresh.set_epoch(2)
    fresh.set_start(7)
    loader = DataLoader(range(300), batch_sampler=fresh)
    assert [b.tolist() for b in loader] == full[7:]
    fresh.set_start(3)
    fresh.set_epoch(3)  # a new epoch forgets a pending start
    assert len(list(fresh)) == len(full)


def test_eval_order_is_sorted_longest_first() -> None:
    lengths = imdb_like_lengths(203)
    sampler = LengthGroupedBatchSampler(lengths, 16, shuffle=False)
    batches = list(sampler)
    assert sorted(flat(batches)) == list(range(203))
    assert len(batches) == len(sampler) == 13 and len(batches[-1]) == 203 - 12 * 16
    seq = lengths[flat(batches)]
    assert (np.diff(seq) <= 0).all()


def test_drop_last() -> None:
    lengths = imdb_like_lengths(103)
    sampler = LengthGroupedBatchSampler(lengths, 10, shuffle=True, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 and all(len(b) == 10 for b in batches)
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        LengthGroupedBatchSampler(lengths, 0, shuffle=True)


# --- padding_fraction ------------------------------------------------------------------------------


def test_padding_fraction_exact() -> None:
    assert padding_fraction([4, 2, 3, 3], [[0, 1], [2, 3]]) == pytest.approx(2 / 14)
    assert padding_fraction([5, 5], [[0, 1]]) == 0.0
    assert padding_fraction([], []) == 0.0


def test_grouping_cuts_padding_on_imdb_like_lengths() -> None:
    lengths = imdb_like_lengths(5000)
    rand = padding_fraction(lengths, random_batches(5000, 16))
    grouped = padding_fraction(lengths, list(LengthGroupedBatchSampler(lengths, 16, shuffle=True)))
    evals = padding_fraction(lengths, list(LengthGroupedBatchSampler(lengths, 16, shuffle=False)))
    assert rand > 0.15
    assert grouped < rand / 5
    assert evals < grouped


def _measure(folder: Path, tokenizer, **kwargs) -> tuple[float, float]:
    data = load_text_classification(str(folder), **kwargs)
    lengths = np.asarray(tokenize_dataset(data.train, tokenizer, 256)["length"][:])
    rand = padding_fraction(lengths, random_batches(len(lengths), 16))
    grouped = padding_fraction(lengths, list(LengthGroupedBatchSampler(lengths, 16, shuffle=True, seed=42)))
    return rand, grouped


def test_real_padding_fractions(shared_data: Path) -> None:
    """MiniLM's (BERT uncased) tokenizer, max length 256, batch 16, on the real train sets."""
    from loratune.models import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    imdb_rand, imdb_grouped = _measure(shared_data / "imdb", tokenizer)
    sst_rand, sst_grouped = _measure(shared_data / "sst2", tokenizer, train_size=20000)
    print(f"padding fraction IMDb random {imdb_rand:.3f} grouped {imdb_grouped:.3f}")
    print(f"padding fraction SST-2 random {sst_rand:.3f} grouped {sst_grouped:.3f}")
    assert imdb_rand > 0.1 and imdb_grouped < 0.03
    assert sst_rand > 0.4 and sst_grouped < 0.1
