"""``python -m pipelines.reembed``: re-embed a changed corpus, reusing the previous run's vectors.

Each row of a snapshot stores a hash of its text. A re-embedding run reads the current
corpus and the ids and hashes of the previous snapshot, joins them by id, embeds only rows
that are new or whose text changed, and drops ids that are gone. Vectors never go through
the join: an unchanged row carries where its previous vector lies (shard, row group, row),
and the vectors are then copied one previous row group at a time. When the
model (fingerprint, dim, normalisation, max_length or semantics) differs from the previous
run's, every row is re-embedded. Outputs, in ``--output``:

* a complete snapshot, laid out exactly as ``pipelines.embed`` lays it out (the next run's
  ``--previous``), equal row for row to a full ``embed`` of the current corpus;
* ``_changes/upserts-*.parquet`` (id, embedding) and ``_changes/deletes-*.parquet`` (id), to
  sync a vector store;
* a manifest counting new, changed, unchanged, deleted and failed rows.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import Write
from apache_beam.metrics.metric import Metrics

from beam_m2v.encoder import Semantics
from beam_m2v.remote_files import is_remote
from pipelines.arguments import parse_program_args, program_parser
from pipelines.content_hash import HASH_COLUMN, HASH_TYPE
from pipelines.embed import (
    Prepared,
    add_input_arguments,
    console_main,
    counter_total,
    embed_tables,
    pipeline_options,
    prepare,
    read_corpus,
    run_and_publish,
    write_snapshot,
)
from pipelines.embed import finish_manifest as embed_manifest
from pipelines.inputs import InputError, ListRowGroups, ReadRowGroup
from pipelines.outputs import (
    CHANGES_DIR,
    EMBEDDING_COLUMN,
    MANIFEST_NAME,
    RunFolders,
    add_output_arguments,
    has_manifest,
    list_folder,
    output_settings,
    read_manifest,
    rows_in,
    shard_paths,
)
from pipelines.parquet_sink import VectorParquetSink
from pipelines.process_exit import exit_process
from pipelines.progress import progress_report

logger = logging.getLogger("beam_m2v.reembed")

DESCRIPTION = """Re-embed a changed corpus: embed only new and changed rows, reuse the previous run's vectors for
the rest, and write a full snapshot plus the change set (upserts, deletes) for a vector store.

example: beam-m2v reembed --input 'corpus/*.parquet' --previous vectors/2026-11-24 --output vectors/2026-11-25"""

#: Model facts that must match for a previous vector to be reused.
MODEL_KEYS = ("model_fingerprint", "dim", "normalize", "max_length", "semantics")
BUCKETS = 64
_CURRENT, _PREVIOUS = "current", "previous"
_TO_EMBED, _UNCHANGED, _DELETES = "to_embed", "unchanged", "deletes"
#: Where a previous vector lies: its shard, row group, and row in the row group.
VECTOR_FILE, VECTOR_GROUP, VECTOR_ROW = "__vector_file", "__vector_group", "__vector_row"
_LOCATION = (VECTOR_FILE, VECTOR_GROUP, VECTOR_ROW)


def bucket_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """A stable bucket per id (the same id lands in the same bucket in every process)."""
    if pa.types.is_integer(ids.type):
        return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64) % buckets
    return np.fromiter((zlib.crc32(repr(value).encode()) % buckets for value in ids.to_pylist()), np.int64, len(ids))


class SplitByBucket(beam.DoFn):  # type: ignore[misc]
    """Cut a table into per-bucket slices keyed by bucket, tagged with where they come from."""

    def __init__(self, id_column: str, side: str, buckets: int = BUCKETS) -> None:
        self._id_column = id_column
        self._side = side
        self._buckets = buckets

    def process(self, table: pa.Table) -> Iterator[tuple[int, tuple[str, pa.Table]]]:
        """Yield ``(bucket, (side, slice))`` for every bucket present in the table."""
        buckets = bucket_of(table.column(self._id_column).combine_chunks(), self._buckets)
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
        for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(table)], strict=True):
            if end > start:
                # take() builds compact buffers: a slice would pickle its parent's whole buffers.
                part = table.take(pa.array(order[start:end]))
                yield int(sorted_buckets[start]), (self._side, part)


class ReadPreviousKeys(ReadRowGroup):
    """Read the ids and text hashes of one previous row group, with where each row's vector lies."""

    def __init__(self, id_column: str, id_type: pa.DataType | None = None) -> None:
        super().__init__([id_column, HASH_COLUMN], counter="previous_rows_read")
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
        (path, group), parts = item
        rows = pa.concat_tables(list(parts)).combine_chunks()
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            vectors = pq.ParquetFile(handle).read_row_group(group, columns=[EMBEDDING_COLUMN]).column(0)
        copied = vectors.take(rows.column(VECTOR_ROW))
        yield rows.drop_columns(list(_LOCATION)).append_column(EMBEDDING_COLUMN, copied)


class JoinBucket(beam.DoFn):  # type: ignore[misc]
    """Decide, for one bucket of ids, what to embed, what to copy and what to delete."""

    def __init__(self, id_column: str, reuse_vectors: bool, output_columns: Sequence[str]) -> None:
        self._id_column = id_column
        self._reuse = reuse_vectors
        self._output_columns = list(output_columns)

    def setup(self) -> None:
        """Create the metrics."""
        self._counters = {
            name: Metrics.counter("beam_m2v", f"reembed_{name}") for name in ("new", "changed", "unchanged", "deleted")
        }

    def process(self, item: tuple[int, Sequence[tuple[str, pa.Table]]]) -> Iterator[Any]:
        """Join the current and previous rows of one bucket by id.

        Rows without a usable text (null ``text_hash``) are sent on to embedding, where they
        become dead letters; they count as neither new nor changed, and a previous vector of
        their id is deleted, since the new snapshot has none.
        """
        _, parts = item
        id_column = self._id_column
        current = _concat([t for side, t in parts if side == _CURRENT])
        previous = _concat([t for side, t in parts if side == _PREVIOUS])
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
        self._counters["new"].inc(int((~matched & embeddable).sum()))
        self._counters["changed"].inc(int((matched & ~same_text & embeddable).sum()))
        self._counters["unchanged"].inc(int(same_text.sum()))
        if (~same_text).any():
            yield beam.pvalue.TaggedOutput(_TO_EMBED, current.filter(pa.array(~same_text)))
        if same_text.any():
            # Only the columns the snapshot keeps travel on, with where the vector lies; not the vector.
            unchanged = current.filter(pa.array(same_text))
            unchanged = unchanged.select([name for name in unchanged.column_names if name in self._output_columns])
            locations = previous.select(list(_LOCATION)).take(pa.array(previous_row[same_text]))  # type: ignore[union-attr]
            for name in _LOCATION:
                unchanged = unchanged.append_column(name, locations.column(name))
            yield beam.pvalue.TaggedOutput(_UNCHANGED, unchanged)
        if previous is not None and len(previous):
            kept_ids = current.column(id_column).filter(pa.array(embeddable)).combine_chunks()
            gone = pc.invert(pc.is_in(previous.column(id_column), value_set=kept_ids))
            if pc.any(gone).as_py():
                deleted = previous.filter(gone).select([id_column])
                self._counters["deleted"].inc(len(deleted))
                yield beam.pvalue.TaggedOutput(_DELETES, deleted)

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


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables).combine_chunks() if tables else None


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


def changed_facts(previous_manifest: dict[str, Any], facts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model facts that differ from the previous run's, as ``{fact: {"previous": old, "current": new}}``.

    Semantics are compared by meaning: ``"seed"``, written by older versions, is ``"static_backend"``.
    """
    changed = {}
    for key in MODEL_KEYS:
        old, new = previous_manifest.get(key), facts.get(key)
        if key == "semantics":
            old, new = _semantics_name(old), _semantics_name(new)
        if old != new:
            changed[key] = {"previous": old, "current": new}
    return changed


def _semantics_name(value: Any) -> Any:
    """The current name of a semantics value (unknown values unchanged)."""
    try:
        return Semantics(value).value
    except ValueError:
        return value


def reusable(previous_manifest: dict[str, Any], facts: dict[str, Any]) -> bool:
    """Whether the previous run's vectors were made by the same model with the same settings."""
    return not changed_facts(previous_manifest, facts)


def describe_changes(changed: dict[str, dict[str, Any]]) -> str:
    """``dim 64 -> 256, normalize False -> True``: what changed, for the log."""
    return ", ".join(f"{key} {change['previous']!r} -> {change['current']!r}" for key, change in changed.items())


def build_pipeline(
    pipeline: beam.Pipeline, prepared: Prepared, folders: RunFolders, previous: list[str], reuse: bool
) -> None:
    """Join current and previous rows by id, embed what changed, write the snapshot and the change set."""
    id_column = prepared.input.id_column
    _, schema = prepared.schema
    current, read_failures = read_corpus(pipeline, prepared)
    previous_keys = (
        pipeline
        | "PreviousFiles" >> beam.Create(previous)
        | "PreviousRowGroups" >> beam.ParDo(ListRowGroups())
        | "SpreadPrevious" >> beam.Reshuffle()
        | "ReadPreviousKeys"
        >> beam.ParDo(ReadPreviousKeys(id_column, schema.field(id_column).type)).with_output_types(pa.Table)
    )
    bucketed = beam.typehints.Tuple[int, beam.typehints.Tuple[str, pa.Table]]
    keyed_current = current | "BucketCurrent" >> beam.ParDo(SplitByBucket(id_column, _CURRENT)).with_output_types(
        bucketed
    )
    keyed_previous = previous_keys | "BucketPrevious" >> beam.ParDo(
        SplitByBucket(id_column, _PREVIOUS)
    ).with_output_types(bucketed)
    joined = (
        (keyed_current, keyed_previous)
        | "Together" >> beam.Flatten()
        | "GroupByBucket" >> beam.GroupByKey()
        | "Join"
        >> beam.ParDo(JoinBucket(id_column, reuse, schema.names))
        .with_output_types(pa.Table)
        .with_outputs(_TO_EMBED, _UNCHANGED, _DELETES)
    )
    reused = (
        joined[_UNCHANGED]
        | "ByPreviousRowGroup"
        >> beam.ParDo(SplitByVectorGroup()).with_output_types(
            beam.typehints.Tuple[beam.typehints.Tuple[str, int], pa.Table]
        )
        | "GroupByPreviousRowGroup" >> beam.GroupByKey()
        | "CopyVectors" >> beam.ParDo(CopyVectors()).with_output_types(pa.Table)
    )
    embedded, failed = embed_tables(joined[_TO_EMBED], prepared)
    # part-new-*: rows embedded now; part-reused-*: unchanged rows with their previous vectors.
    write_snapshot([("new", embedded), ("reused", reused)], [failed, *read_failures], prepared, folders)
    upsert_schema = pa.schema([schema.field(id_column), schema.field(EMBEDDING_COLUMN)], metadata=schema.metadata)
    _ = (
        embedded
        | "UpsertColumns"
        >> beam.Map(lambda table: table.select([id_column, EMBEDDING_COLUMN]).cast(upsert_schema)).with_output_types(
            pa.Table
        )
        | "WriteUpserts"
        >> Write(
            VectorParquetSink(
                folders.changes_prefix("upserts"),
                upsert_schema,
                vector_columns=[EMBEDDING_COLUMN],
                undictionary_columns=[id_column],
                byte_stream_split=prepared.byte_stream_split,
            )
        )
    )
    delete_schema = pa.schema([schema.field(id_column)])
    _ = joined[_DELETES] | "WriteDeletes" >> Write(
        VectorParquetSink(
            folders.changes_prefix("deletes"),
            delete_schema,
            vector_columns=[],
            undictionary_columns=[id_column],
        )
    )


def parser() -> argparse.ArgumentParser:
    """The command line of ``beam-m2v reembed``: ``embed``'s options and ``--previous``."""
    reembed_parser = program_parser("beam-m2v reembed", DESCRIPTION)
    add_input_arguments(reembed_parser)
    reembed_parser.add_argument(
        "--previous",
        required=True,
        metavar="FOLDER",
        help="output folder of the previous embed or reembed run, whose vectors are reused",
    )
    add_output_arguments(reembed_parser)
    return reembed_parser


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the re-embedding pipeline; returns the published manifest."""
    from pipelines import lance_output  # an output ending in .lance is a Lance dataset

    if lance_output.lance_output(argv):
        return lance_output.run_reembed(argv)
    args, beam_args = parse_program_args(parser(), argv)
    options = pipeline_options(beam_args, threads_per_worker=args.m2v_threads_per_worker)
    FileSystems.set_options(options)
    settings = output_settings(args)  # before any work: an output that must not be replaced stops here
    prepared = prepare(args)
    id_column = prepared.input.id_column
    previous = previous_files(args.previous, id_column, prepared.schema[1].field(id_column).type)
    previous_manifest = read_manifest(args.previous)
    changed = changed_facts(previous_manifest, prepared.model_facts)
    reuse = not changed
    if changed:
        logger.info(
            "re-embedding every row: the model or a setting changed since the previous run (%s)",
            describe_changes(changed),
        )
    folders = RunFolders.new(settings.output)
    started = datetime.datetime.now(datetime.timezone.utc)
    return run_and_publish(
        options,
        folders,
        lambda pipeline: build_pipeline(pipeline, prepared, folders, previous, reuse),
        lambda result: finish_manifest(prepared, folders, result, started, args.previous, changed),
        max_failed_fraction=settings.max_failed_fraction,
        progress=progress_report(options, prepared.files, prepared.input.format, args.progress_seconds),
    )


def finish_manifest(
    prepared: Prepared,
    folders: RunFolders,
    result: Any,
    started: datetime.datetime,
    previous: str,
    changed: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The embed manifest plus what changed: new, changed, unchanged, deleted, encoded, upserts.

    When every row was re-embedded, ``reembed_all_because`` names the model facts that changed.
    """
    counts = {name: counter_total(result, f"reembed_{name}") for name in ("new", "changed", "unchanged", "deleted")}
    counts["encoded"] = counter_total(result, "texts_embedded")  # texts that went through the model this run
    counts["previous_read"] = counter_total(result, "previous_rows_read")
    changes = list_folder(f"{folders.staging}/{CHANGES_DIR}", ".parquet")
    counts["upserts"] = rows_in(path for path in changes if os.path.basename(path).startswith("upserts-"))
    facts = {
        "previous": previous if is_remote(previous) else os.path.abspath(previous),
        "reused_previous_vectors": not changed,
    }
    if changed:
        facts["reembed_all_because"] = changed
    return embed_manifest(prepared, folders, result, started, extra_rows=counts, extra_fields=facts)


def summary_line(manifest: dict[str, Any]) -> str:
    """One line: what changed and how long it took."""
    rows = manifest["rows"]
    return (
        f"done: {rows['read']:,} rows read; {rows['new']:,} new, {rows['changed']:,} changed, "
        f"{rows['unchanged']:,} unchanged (vectors reused), {rows['deleted']:,} deleted, {rows['failed']:,} failed "
        f"in {manifest['seconds']:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v reembed``."""
    return console_main("reembed", run, summary_line, argv)


if __name__ == "__main__":
    exit_process(main())
