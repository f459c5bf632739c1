"""The loaded adapters' budget: least-recently-used order, pins, and eviction past a count or a size."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from loratune.errors import LoratuneError


class AdapterCache:
    """Which adapters are loaded, in least-recently-used order, and which are pinned.

    Args:
        max_adapters: at most this many loaded adapters.
        memory_limit: at most this many bytes of adapter weights loaded.
    """

    def __init__(self, max_adapters: int | None = None, memory_limit: int | None = None) -> None:
        self.max_adapters = max_adapters
        self.memory_limit = memory_limit
        self.evictions = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()  # loaded adapters' bytes, least recently used first
        self._pinned: set[str] = set()

    def loaded(self) -> list[str]:
        """Loaded adapters, least recently used first."""
        return list(self._sizes)

    def is_pinned(self, name: str) -> bool:
        return name in self._pinned

    def pin(self, name: str) -> None:
        """Keep ``name`` loaded: eviction never picks it."""
        self._pinned.add(name)

    def unpin(self, name: str) -> None:
        self._pinned.discard(name)

    def use(self, name: str, nbytes: int) -> None:
        """Count ``name`` (``nbytes`` of weights) as loaded and most recently used."""
        self._sizes[name] = nbytes
        self._sizes.move_to_end(name)

    def remove(self, name: str) -> None:
        """Count ``name`` as no longer loaded."""
        self._sizes.pop(name, None)

    def evict(self, keep: set[str], drop: Callable[[str], None]) -> None:
        """``drop`` least recently used unpinned adapters (not in ``keep``) while over the budget."""
        while self._over_budget():
            victim = next((n for n in self._sizes if n not in keep and n not in self._pinned), None)
            if victim is None:
                raise LoratuneError(
                    f"the {len(self._sizes)} adapters this request needs or pinned ones exceed the adapter budget; "
                    "raise max_adapters / adapter_memory_mb or unpin some"
                )
            drop(victim)
            self.remove(victim)
            self.evictions += 1

    def _over_budget(self) -> bool:
        too_many = self.max_adapters is not None and len(self._sizes) > self.max_adapters
        return too_many or (self.memory_limit is not None and sum(self._sizes.values()) > self.memory_limit)
