"""The deterministic split of a work list over ranks.

The items are sorted (by ``key``, default their own order) and cut into ``world_size``
contiguous blocks whose sizes differ by at most one, the first ``n % world_size`` ranks taking
one more (7 items over 3 ranks: 3, 2, 2). The split depends only on the items and the world
size, never on timing, so a rerun with the same world size gives every rank the same items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def shard_bounds(num_items: int, world_size: int) -> list[tuple[int, int]]:
    """(start, stop) of every rank's block of ``num_items`` sorted items."""
    if world_size < 1 or num_items < 0:
        raise ValueError(f"shard: need world_size >= 1 and num_items >= 0, got "
                         f"{world_size}, {num_items}")  # fmt: skip
    base, extra = divmod(num_items, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard(
    items: Sequence[T], rank: int, world_size: int, key: Callable[[T], Any] | None = None
) -> list[T]:
    """The items of ``rank``: its block of ``sorted(items, key=key)``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"shard: rank {rank} outside 0..{world_size - 1}")
    ordered = sorted(items, key=key)
    start, stop = shard_bounds(len(ordered), world_size)[rank]
    return ordered[start:stop]
