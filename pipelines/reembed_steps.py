"""The steps of ``reembed`` into a folder: read the previous snapshot's keys, join by id, copy reused vectors.

The current rows and the ids and text hashes of the previous snapshot meet in buckets of ids
(``pipelines.id_buckets``, ``JoinBucket``): a row whose id and text are unchanged carries where its
previous vector lies (shard, row group, row), and ``CopyVectors`` then reads those vectors one
previous row group at a time; new and changed rows go on to be embedded; ids that are gone are
deleted. ``previous_files`` checks that a previous output carries what this needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics

from beam_m2v.transforms.metrics import (
    NAMESPACE,
    PREVIOUS_ROWS_READ,
    REEMBED_CHANGED,
    REEMBED_DELETED,
    REEMBED_NEW,
    REEMBED_UNCHANGED,
)
from pipelines.columns import EMBEDDING_COLUMN, HASH_COLUMN
from pipelines.content_hash import HASH_TYPE
from pipelines.id_buckets import CURRENT, PREVIOUS, side_table
from pipelines.inputs import InputError, ReadRowGroup
from pipelines.outputs import MANIFEST_NAME, has_manifest, shard_paths

#: The outputs of ``JoinBucket``: rows to embed, unchanged rows (with where their vector lies), ids gone.
TO_EMBED, UNCHANGED, DELETES = "to_embed", "unchanged", "deletes"
#: Where a previous vector lies: its shard, row group, and row in the row group.
VECTOR_FILE, VECTOR_GROUP, VECTOR_ROW = "__vector_file", "__vector_group", "__vector_row"
#: The columns that say where a previous vector lies.
LOCATION = (VECTOR_FILE, VECTOR_GROUP, VECTOR_ROW)


class ReadPreviousKeys(ReadRowGroup):
    """Read the ids and text hashes of one previous row group, with where each row's vector lies."""

    def __init__(self, id_column: str, id_type: pa.DataType | None = None) -> None:
        super().__init__([id_column, HASH_COLUMN], counter=PREVIOUS_ROWS_READ)
        self._id_column = id_column
        self._id_type = id_type

    def process(self, item: tuple[str, int, int]) -> Iterator[pa.Table]:
        """The keys of the row group ``item`` names (``ListRowGroups``'s items)."""
        path, group, _ = item
        table = self.read(item)
        if self._id_type is not None and table.schema.field(self._id_column).type != self._id_type:
            # A type id_types_match accepted (wider integers, another string type): no value changes.
            index = table.schema.get_field_index(self._id_column)
            ids = table.column(index).cast(self._id_type, safe=True)
            table = table.set_column(index, pa.field(self._id_column, self._id_type), ids)
        rows = len(table)
        files = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array([path]))
        yield (
            table.append_column(VECTOR_FILE, files)
            .append_column(VECTOR_GROUP, pa.array(np.full(rows, group, dtype=np.int32)))
            .append_column(VECTOR_ROW, pa.array(np.arange(rows, dtype=np.int32)))
        )


class SplitByVectorGroup(beam.DoFn):  # type: ignore[misc]
    """Key the unchanged rows of a table by the previous row group that holds their vectors."""

    def process(self, table: pa.Table) -> Iterator[tuple[tuple[str, int], pa.Table]]:
        """Yield ``((shard, row group), rows)`` for every previous row group the table's rows point into."""
        files = table.column(VECTOR_FILE).combine_chunks().cast(pa.string()).to_numpy(zero_copy_only=False)
        groups = table.column(VECTOR_GROUP).to_numpy()
        for path in np.unique(files):
            in_file = files == path
            for group in np.unique(groups[in_file]):
                rows = np.flatnonzero(in_file & (groups == group))
                yield (str(path), int(group)), table.take(pa.array(rows))


class CopyVectors(beam.DoFn):  # type: ignore[misc]
    """Append to unchanged rows their vectors, read from one previous row group."""

    def process(self, item: tuple[tuple[str, int], Sequence[pa.Table]]) -> Iterator[pa.Table]:
        """Read the row group's vector column once and take the rows asked for."""
        (path, group), tables = item
        rows = pa.concat_tables(list(tables)).combine_chunks()
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            vectors = pq.ParquetFile(handle).read_row_group(group, columns=[EMBEDDING_COLUMN]).column(0)
        copied = vectors.take(rows.column(VECTOR_ROW))
        yield rows.drop_columns(list(LOCATION)).append_column(EMBEDDING_COLUMN, copied)


class JoinBucket(beam.DoFn):  # type: ignore[misc]
    """Decide, for one bucket of ids, what to embed, what to copy and what to delete."""

    def __init__(self, id_column: str, reuse_vectors: bool, output_columns: Sequence[str]) -> None:
        self._id_column = id_column
        self._reuse = reuse_vectors
        self._output_columns = list(output_columns)

    def setup(self) -> None:
        """Create the metrics."""
        self._new = Metrics.counter(NAMESPACE, REEMBED_NEW)
        self._changed = Metrics.counter(NAMESPACE, REEMBED_CHANGED)
        self._unchanged = Metrics.counter(NAMESPACE, REEMBED_UNCHANGED)
        self._deleted = Metrics.counter(NAMESPACE, REEMBED_DELETED)

    def process(self, item: tuple[int, Sequence[tuple[str, pa.Table]]]) -> Iterator[Any]:
        """Join the current and previous rows of one bucket by id.

        Rows without a usable text (null ``text_hash``) are sent on to embedding, where they
        become dead letters; they count as neither new nor changed, and a previous vector of
        their id is deleted, since the new snapshot has none.
        """
        _, tables = item
        id_column = self._id_column
        current = side_table(tables, CURRENT)
        previous = side_table(tables, PREVIOUS)
        if current is None:
            current = pa.table({id_column: pa.array([], previous.schema.field(id_column).type)}) if previous else None
        if previous is not None:
            previous = _first_per_id(previous, id_column)
        if current is None:
            return
        embeddable = (
            current.column(HASH_COLUMN).is_valid().to_numpy(zero_copy_only=False)
            if len(current)
            else np.ones(0, dtype=bool)
        )
        previous_row = self._previous_rows(current, previous)
        matched = previous_row >= 0
        same_text = np.zeros(len(current), dtype=bool)
        if self._reuse and previous is not None and matched.any():
            old_hashes = previous.column(HASH_COLUMN).take(pa.array(previous_row[matched]))
            new_hashes = current.column(HASH_COLUMN).take(pa.array(np.flatnonzero(matched)))
            equal = pc.fill_null(pc.equal(old_hashes, new_hashes), False).to_numpy(zero_copy_only=False)
            same_text[np.flatnonzero(matched)[equal]] = True
        self._new.inc(int((~matched & embeddable).sum()))
        self._changed.inc(int((matched & ~same_text & embeddable).sum()))
        self._unchanged.inc(int(same_text.sum()))
        if (~same_text).any():
            yield beam.pvalue.TaggedOutput(TO_EMBED, current.filter(pa.array(~same_text)))
        if same_text.any():
            # Only the columns the snapshot keeps travel on, with where the vector lies; not the vector.
            unchanged = current.filter(pa.array(same_text))
            unchanged = unchanged.select([name for name in unchanged.column_names if name in self._output_columns])
            locations = previous.select(list(LOCATION)).take(pa.array(previous_row[same_text]))  # type: ignore[union-attr]
            for name in LOCATION:
                unchanged = unchanged.append_column(name, locations.column(name))
            yield beam.pvalue.TaggedOutput(UNCHANGED, unchanged)
        if previous is not None and len(previous):
            kept_ids = current.column(id_column).filter(pa.array(embeddable)).combine_chunks()
            gone = pc.invert(pc.is_in(previous.column(id_column), value_set=kept_ids))
            if pc.any(gone).as_py():
                deleted = previous.filter(gone).select([id_column])
                self._deleted.inc(len(deleted))
                yield beam.pvalue.TaggedOutput(DELETES, deleted)

    def _previous_rows(self, current: pa.Table, previous: pa.Table | None) -> np.ndarray:
        """For each current row, the row of the same id in ``previous`` (-1 where there is none)."""
        if previous is None or len(previous) == 0 or len(current) == 0:
            return np.full(len(current), -1, dtype=np.int64)
        current_keys = pa.table(
            {"key": current.column(self._id_column), "current_row": pa.array(np.arange(len(current)))}
        )
        previous_keys = pa.table(
            {"key": previous.column(self._id_column), "previous_row": pa.array(np.arange(len(previous)))}
        )
        joined = current_keys.join(previous_keys, keys="key", join_type="left outer").sort_by("current_row")
        rows = joined.column("previous_row").to_numpy(zero_copy_only=False)
        return np.where(np.isnan(rows.astype(np.float64)), -1, rows).astype(np.int64)


def _first_per_id(table: pa.Table, id_column: str) -> pa.Table:
    """Keep the first row of every id (a snapshot written from a corpus with duplicate ids has several)."""
    indices = pa.table({"key": table.column(id_column), "row": pa.array(np.arange(len(table)))})
    first = indices.group_by("key", use_threads=False).aggregate([("row", "min")]).column("row_min")
    if len(first) == len(table):
        return table
    return table.take(pa.array(np.sort(first.to_numpy())))


def previous_files(previous: str, id_column: str, id_type: pa.DataType | None = None) -> list[str]:
    """The vector shards of a previous output, checked to carry what re-embedding needs.

    Outputs of older versions (``manifest.json``, ``failed/``, ``changes/``) are read too. With
    ``id_type`` (the input's id type), previous ids of another type are refused unless every
    value converts exactly (``id_types_match``).
    """
    if not has_manifest(previous):
        raise InputError(
            f"--previous {previous!r} has no {MANIFEST_NAME}: it is not a finished output of beam-m2v embed/reembed"
        )
    files = shard_paths(previous)
    if not files:
        raise InputError(f"--previous {previous!r} holds no Parquet shards (is it an output of beam-m2v embed?)")
    with FileSystems.open(files[0], compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        schema = pq.read_schema(handle)
    for column, wanted in ((id_column, None), (HASH_COLUMN, HASH_TYPE), (EMBEDDING_COLUMN, None)):
        if column not in schema.names or (wanted is not None and schema.field(column).type != wanted):
            found = ", ".join(f"{field.name}: {field.type}" for field in schema)
            raise InputError(
                f"{files[0]}: the previous shards need columns {id_column!r}, {HASH_COLUMN!r} ({HASH_TYPE}) and "
                f"{EMBEDDING_COLUMN!r}; found {found} (re-run a full beam-m2v embed to make a usable --previous)"
            )
    previous_type = schema.field(id_column).type
    if id_type is not None and not id_types_match(previous_type, id_type):
        raise InputError(
            f"--previous {previous!r} holds ids of type {previous_type} in {id_column!r} but the input's are "
            f"{id_type}: previous vectors cannot be matched by id; run beam-m2v embed for a full snapshot, or give "
            "the input ids of the previous type"
        )
    return files


def id_types_match(previous: pa.DataType, current: pa.DataType) -> bool:
    """Whether every id of type ``previous`` converts exactly to ``current`` (equal, wider integer, string kinds)."""
    previous, current = _value_type(previous), _value_type(current)
    if previous == current:
        return True
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(test(previous) for test in strings) and any(test(current) for test in strings):
        return True
    if not (pa.types.is_integer(previous) and pa.types.is_integer(current)):
        return False
    signed = pa.types.is_signed_integer
    if signed(previous) == signed(current):
        return bool(previous.bit_width <= current.bit_width)
    return not signed(previous) and bool(previous.bit_width < current.bit_width)


def _value_type(data_type: pa.DataType) -> pa.DataType:
    """The type of the values (a dictionary's value type)."""
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type
