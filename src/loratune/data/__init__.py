"""Data: the options (``options``), the source they name (``resolve``, ``hub_datasets``), one reader per
file format (``readers``), the split policy (``splits``), the loader every task shares (``load``), each
task's records (``labelled_texts``, ``tagging``, ``lm``), and tokenising, padding and batching (``batching``)."""

from loratune.data.batching import (
    DistributedLengthGroupedBatchSampler,
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    RankShard,
    padding_fraction,
    tokenize_dataset,
)
from loratune.data.labelled_texts import TextClassificationData, load_text_classification
from loratune.data.options import DataOptions
from loratune.data.resolve import tweets_path

__all__ = [
    "DataOptions",
    "DistributedLengthGroupedBatchSampler",
    "DynamicPaddingCollator",
    "LengthGroupedBatchSampler",
    "RankShard",
    "TextClassificationData",
    "load_text_classification",
    "padding_fraction",
    "tokenize_dataset",
    "tweets_path",
]
