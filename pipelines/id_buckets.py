"""Where current and previous rows meet: buckets of ids, the same in every process.

``SplitByBucket`` cuts each table into one table per bucket, tagged with its side (``CURRENT``
or ``PREVIOUS``); after a GroupByKey, one bucket's rows of both sides are together and
``side_table`` gives each side as one table. ``reembed`` into a folder joins current and
previous rows this way.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa

#: Buckets the ids meet in, unless told otherwise.
BUCKETS = 64
#: Which side of the join a table comes from.
CURRENT, PREVIOUS = "current", "previous"


def bucket_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """A stable bucket per id (the same id lands in the same bucket in every process)."""
    if pa.types.is_integer(ids.type):
        return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64) % buckets
    return np.fromiter((zlib.crc32(repr(value).encode()) % buckets for value in ids.to_pylist()), np.int64, len(ids))


class SplitByBucket(beam.DoFn):  # type: ignore[misc]
    """Cut a table into one table per bucket, keyed by bucket and tagged with the side it comes from."""

    def __init__(self, id_column: str, side: str, buckets: int = BUCKETS) -> None:
        self._id_column = id_column
        self._side = side
        self._buckets = buckets

    def process(self, table: pa.Table) -> Iterator[tuple[int, tuple[str, pa.Table]]]:
        """Yield ``(bucket, (side, rows))`` for every bucket present in the table."""
        buckets = bucket_of(table.column(self._id_column).combine_chunks(), self._buckets)
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
        for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(table)], strict=True):
            if end > start:
                # take() builds compact buffers: a slice would pickle its parent's whole buffers.
                rows = table.take(pa.array(order[start:end]))
                yield int(sorted_buckets[start]), (self._side, rows)


def side_table(tagged: Iterable[tuple[str, pa.Table]], side: str) -> pa.Table | None:
    """The tables of one side of a bucket as one table (None when that side has none)."""
    tables = [table for name, table in tagged if name == side]
    return pa.concat_tables(tables).combine_chunks() if tables else None
