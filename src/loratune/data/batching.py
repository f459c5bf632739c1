"""From text to batches: tokenising without padding, padding each batch to its own longest sequence,
and grouping sequences of similar length so that little compute goes to padding.

Padding a batch to its longest member wastes ``sum(max_len - len_i)`` token slots (``padding_fraction``
counts them); :class:`LengthGroupedBatchSampler` makes batches of similar lengths, so that little of
each batch is padding, while the batch order stays random (figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from loratune.errors import DataError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize_dataset(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    *,
    text_column: str = "text",
    batch_size: int = 1000,
) -> datasets.Dataset:
    """Tokenise ``ds[text_column]`` with truncation to ``max_length`` and no padding.

    Returns an in-memory dataset (no cache files are written) with ``input_ids``, ``attention_mask``
    (and ``token_type_ids`` when the tokenizer makes them), ``length`` and, when ``ds`` has a ``label``
    or ``labels`` column, ``labels`` (int).
    """
    if max_length < 1:
        raise DataError(f"max_length must be >= 1, got {max_length}; pass e.g. --max-length 256.")
    if text_column not in ds.column_names:
        raise DataError(
            f"column '{text_column}' not found in the dataset to tokenise; the columns are: "
            f"{', '.join(ds.column_names)}. Load it with load_text_classification first."
        )
    label_column = next((c for c in ("label", "labels") if c in ds.column_names), None)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        enc = tokenizer([str(t) for t in batch[text_column]], truncation=True, max_length=max_length, padding=False)
        out = {key: enc[key] for key in MODEL_INPUTS if key in enc}
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        if label_column is not None:
            out["labels"] = [int(v) for v in batch[label_column]]
        return out

    return ds.map(
        encode,
        batched=True,
        batch_size=batch_size,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=dataset_fingerprint(ds, tokenizer, max_length, text_column),
        desc="Tokenising",
    )


def dataset_fingerprint(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, column: str) -> str:
    """A cheap fingerprint for the map (hashing a tokenizer object with dill can be slow)."""
    name = getattr(tokenizer, "name_or_path", "")
    tag = f"{ds._fingerprint}|{type(tokenizer).__name__}|{name}|{len(tokenizer)}|{max_length}|{column}"
    return hashlib.sha256(tag.encode()).hexdigest()[:32]


class DynamicPaddingCollator:
    """Pad each batch to its own longest sequence and return torch tensors.

    Wraps ``transformers.DataCollatorWithPadding``; keys other than the model inputs and ``labels``
    (e.g. ``length``, ``text``) are dropped. ``labels`` come back as ``torch.long``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
    ) -> None:
        """``max_length``: pad every batch to this length instead (the padded baseline of benchmarks)."""
        if tokenizer.pad_token is None:
            raise DataError(
                "the tokenizer has no pad token; load it with loratune.models.load_tokenizer "
                "(which uses the EOS token) or set tokenizer.pad_token."
            )
        self.tokenizer = tokenizer
        self._collator = DataCollatorWithPadding(
            tokenizer,
            padding="max_length" if max_length else "longest",
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            return_tensors="pt",
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keep = (*MODEL_INPUTS, "labels", "label")
        cleaned = [{k: v for k, v in f.items() if k in keep} for f in features]
        batch = dict(self._collator(cleaned))
        if "labels" in batch:
            batch["labels"] = batch["labels"].long()
        return batch


class LengthGroupedBatchSampler:
    """Batches of indices with similar lengths; deterministic for ``(seed, epoch)``; resumable.

    Training (``shuffle=True``): shuffle all indices with a generator seeded from ``(seed, epoch)``, cut
    them into mega-buckets of ``mega_batches * batch_size``, sort each bucket by length (longest first),
    cut it into batches and shuffle the batch order; the batch holding the longest sequence goes first so
    that an out-of-memory error shows at step 1. Evaluation (``shuffle=False``): all indices sorted by
    length, longest first, each exactly once.

    ``set_epoch(e)`` picks the epoch's order; ``set_start(k)`` makes the next iteration skip the first
    ``k`` batches of that order (resuming mid-epoch) and ``len()`` counts the batches still to come.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 42,
        drop_last: bool = False,
        mega_batches: int = 50,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}; pass e.g. --batch-size 16.")
        if mega_batches < 1:
            raise ValueError(f"mega_batches must be >= 1, got {mega_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.mega_batches = mega_batches
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from now on (and forget any pending ``set_start``)."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, batch_index: int) -> None:
        """Skip the first ``batch_index`` batches of the current epoch in the next iteration."""
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        self.start = int(batch_index)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` (default: the current one), in order, none skipped."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.lengths)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(n)
            mega = self.mega_batches * self.batch_size
            out: list[list[int]] = []
            for lo in range(0, n, mega):
                bucket = perm[lo : lo + mega]
                bucket = bucket[np.argsort(-self.lengths[bucket], kind="stable")]
                out.extend(bucket[i : i + self.batch_size].tolist() for i in range(0, len(bucket), self.batch_size))
            out = self._drop(out)
            order = rng.permutation(len(out))
            out = [out[i] for i in order]
            if out:  # longest batch first: memory errors show at once, not hours in
                longest = max(range(len(out)), key=lambda i: int(self.lengths[out[i]].max()))
                out[0], out[longest] = out[longest], out[0]
        else:
            idx = np.argsort(-self.lengths, kind="stable")
            out = self._drop([idx[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)])
        return out

    def _drop(self, batches: list[list[int]]) -> list[list[int]]:
        if self.drop_last:
            return [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start = self.start, 0
        yield from self.batches()[start:]

    def __len__(self) -> int:
        n = len(self.lengths)
        # mega-buckets are whole multiples of batch_size: only the very last batch can be short
        num = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return max(0, num - self.start)


class DistributedLengthGroupedBatchSampler(LengthGroupedBatchSampler):
    """One rank's share of the global batches of a ``LengthGroupedBatchSampler``, for data-parallel training.

    The global batches are those of ``LengthGroupedBatchSampler`` with ``batch_size * num_replicas``
    examples, in its seeded, resumable order; rank ``r`` takes every ``num_replicas``-th example of each
    (``batch[r::num_replicas]``). Each rank's batch therefore holds similar lengths, the ranks' batches
    are alike in length (no rank waits long for another), every rank has the same number of batches,
    and a run on N processes sees the same global batches as one process with N times the batch size.
    A last global batch with fewer examples than ranks is left out, so no rank gets an empty batch.
    ``set_epoch`` and ``set_start`` (a global batch index) work as in the parent class.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        num_replicas: int,
        rank: int,
        shuffle: bool,
        seed: int = 42,
        drop_last: bool = False,
        mega_batches: int = 50,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}; pass e.g. --batch-size 16.")
        super().__init__(
            lengths,
            batch_size * num_replicas,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            mega_batches=mega_batches,
        )
        self.num_replicas, self.rank = num_replicas, rank

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one), in order, none skipped."""
        world = self.num_replicas
        return [batch[self.rank :: world] for batch in super().batches(epoch) if len(batch) >= world]

    def __len__(self) -> int:
        n, world = len(self.lengths), self.num_replicas
        full, rest = divmod(n, self.batch_size)
        num = full + int(not self.drop_last and rest >= world)
        return max(0, num - self.start)


class RankShard:
    """Every ``num_replicas``-th batch of ``batch_sampler``, from batch ``rank`` on: one rank's share of an
    evaluation. Each batch goes to exactly one rank, whole, so the shards together hold every example
    once (a rank may have one batch fewer than another, or none)."""

    def __init__(self, batch_sampler: Any, *, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.batch_sampler, self.num_replicas, self.rank = batch_sampler, num_replicas, rank

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i % self.num_replicas == self.rank:
                yield batch

    def __len__(self) -> int:
        return len(range(self.rank, len(self.batch_sampler), self.num_replicas))


def padding_fraction(lengths: Sequence[int] | np.ndarray, batch_indices_list: Sequence[Sequence[int]]) -> float:
    """Fraction of token slots that are padding when each batch is padded to its longest member."""
    lengths = np.asarray(lengths, dtype=np.int64)
    padded = real = 0
    for batch in batch_indices_list:
        if len(batch) == 0:
            continue
        lens = lengths[np.asarray(batch, dtype=np.int64)]
        padded += int(lens.max()) * len(lens)
        real += int(lens.sum())
    return 0.0 if padded == 0 else (padded - real) / padded
