"""Read: the dump's listing items in input order, this shard's share of them, from where a resumed scan left off."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Callable, Iterator

from markguard.datasets.listings import ListingItem, open_dump, shard


def _items(source: str, shard_spec: tuple[int, int] | None) -> Iterator[ListingItem]:
    items = open_dump(source)
    return shard(items, *shard_spec) if shard_spec else items


def item_source(source: str | Path, shard_spec: tuple[int, int] | None) -> Callable[[], Iterator[ListingItem]]:
    """A picklable callable giving a fresh iterator of the (sharded) dump's items, for decode workers.
    Opens the dump once here, so a missing or unreadable one fails in the main process."""
    open_dump(source)
    return functools.partial(_items, str(source), shard_spec)


def skip(items: Iterator[ListingItem], n: int) -> Iterator[ListingItem]:
    """The items after the first ``n`` (the rows a resumed scan already wrote)."""
    return itertools.islice(items, n, None)
