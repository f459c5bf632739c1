"""The loaded adapters' budget on its own: LRU order, pins, the count and the size limits."""

from __future__ import annotations

import pytest

from loratune.errors import LoratuneError
from loratune.serve.cache import AdapterCache


def load(cache: AdapterCache, name: str, nbytes: int = 1) -> list[str]:
    """Load ``name`` into ``cache`` as the runtime does; the names it evicts."""
    dropped: list[str] = []
    cache.use(name, nbytes)
    cache.evict({name}, dropped.append)
    return dropped


def test_the_least_recently_used_adapter_is_evicted_past_the_count():
    cache = AdapterCache(max_adapters=2)
    assert load(cache, "a") == load(cache, "b") == []
    cache.use("a", 1)  # a used again: b is now the least recently used
    assert load(cache, "c") == ["b"]
    assert cache.loaded() == ["a", "c"] and cache.evictions == 1


def test_pinned_adapters_stay_and_a_budget_they_fill_is_an_error():
    cache = AdapterCache(max_adapters=1)
    load(cache, "a")
    cache.pin("a")
    with pytest.raises(LoratuneError, match="exceed the adapter budget"):
        load(cache, "b")
    cache.unpin("a")
    assert load(cache, "b") == ["a"] and cache.loaded() == ["b"]


def test_the_memory_limit_counts_the_bytes_loaded():
    cache = AdapterCache(memory_limit=10)
    assert load(cache, "a", 6) == load(cache, "b", 4) == []
    assert load(cache, "c", 1) == ["a"] and cache.loaded() == ["b", "c"]
