"""``LastConversion``: share one derived copy of a tensor among the layers that all derive it.

Several layers often convert the same input the same way (query and value cast one hidden state to
bf16; every attention layer turns one padding mask into an additive bias). Keeping the most recent
conversion lets them share one copy, which is also what their autograd graphs then save once.
Only weak references are held: the copy lives as long as someone uses it, and an in-place change
of the source (its version counter) invalidates it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable

import torch


class LastConversion:
    """A one-entry, per-thread cache of ``make()`` for a source tensor and a key (e.g. a dtype)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, src: torch.Tensor, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        entry = getattr(self._local, "entry", None)
        if entry is not None:
            src_ref, version, entry_key, out_ref = entry
            out = out_ref()
            if out is not None and src_ref() is src and version == src._version and entry_key == key:
                return out
        out = make()
        self._local.entry = (weakref.ref(src), src._version, key, weakref.ref(out))
        return out
