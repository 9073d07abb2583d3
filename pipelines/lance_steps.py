"""The Beam steps of a Lance run: previous keys, classifying rows, reconciling fragments, and the one commit.

A re-embedding run reads the ids, text hashes and kept columns of the dataset's latest
version, with each row's address (fragment id and offset), once in each worker process, which
holds them (about 30 bytes a row plus kept values) and classifies the corpus table by table
where it is read: a row whose id has one previous row with the same text hash and kept values
is unchanged and goes no further; the others (new, changed) are embedded and appended. What
travels on is small: for unchanged rows, the address of the previous row they keep; for the
other rows whose id the previous version has, their ids. The kept addresses meet in one
group per previous fragment, where every other row of the fragment is deleted (a deletion
file, written by the worker) and a previous row kept by several current rows is copied. The
commit step checks that every row is accounted for and commits the appended and updated
fragments as one version. Unchanged vectors are never read or rewritten.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.shared import Shared

from beam_m2v.transforms.lance_write import LanceCommitPlan, LanceTarget, commit_fragments, fragment_rows
from pipelines.columns import HASH_COLUMN

#: The row address column Lance adds when asked (``fragment id << 32 | offset``).
ROW_ADDRESS = "_rowaddr"
#: Tagged outputs of ``ClassifyRows`` and ``ReconcileFragment``.
TO_EMBED, KEPT, SEEN_IDS, COPIES, TALLY = "to_embed", "kept", "seen_ids", "copies", "tally"
UPDATED, REMOVED = "updated", "removed"
#: The offsets of a fragment no unchanged row keeps (every fragment is grouped with at least this).
NO_ROWS = np.zeros(0, dtype=np.int64)
#: Where a run's record and dead letters go, inside the dataset's folder (Lance ignores it).
RUNS_DIR = "_beam_m2v/runs"
MANIFEST_NAME = "manifest.json"
#: Transaction property holding the run's record, committed atomically with its version.
RUN_PROPERTY = "beam_m2v_run"


def tally(name: str) -> Any:
    """A ``Map`` turning tables into ``(name, rows)`` and anything else into ``(name, 1)``."""
    return beam.Map(lambda element: (name, element.num_rows if isinstance(element, pa.Table) else 1))


class _VersionReader(beam.DoFn):  # type: ignore[misc]
    """A DoFn that reads ``columns`` of one version of a dataset, opened once per DoFn instance."""

    def __init__(self, target: LanceTarget, version: int, columns: Sequence[str]) -> None:
        self._target = target
        self._version = version
        self._columns = list(columns)

    def setup(self) -> None:
        """Open the dataset at the version read from."""
        self._dataset = self._target.open(self._version)


def _concat(tables: Sequence[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(list(tables)).combine_chunks() if tables else None


def _ids(table: pa.Table, id_column: str) -> pa.Array:
    return table.column(id_column).combine_chunks()


def _equal_or_both_null(left: pa.Array, right: pa.Array) -> np.ndarray:
    """Element-wise equality where two nulls are equal."""
    same = pc.fill_null(pc.equal(left, right), False).to_numpy(zero_copy_only=False)
    both_null = pc.and_(pc.is_null(left), pc.is_null(right)).to_numpy(zero_copy_only=False)
    return np.asarray(same | both_null, dtype=bool)


class IdIndex:
    """Ids indexed once for lookups: which of some ids it holds, and the row of each it holds exactly once."""

    def __init__(self, ids: pa.Array) -> None:
        self._numeric = pa.types.is_integer(ids.type) and ids.null_count == 0
        if self._numeric:
            values = ids.to_numpy().astype(np.int64, copy=False)
            if len(values) < 2 or bool((values[1:] > values[:-1]).all()):  # ids written in order: no sort needed
                self._unique, self._first = values, np.arange(len(values), dtype=np.int64)
                self._counts = np.ones(len(values), dtype=np.int64)
            else:
                self._unique, self._first, self._counts = np.unique(values, return_index=True, return_counts=True)
        else:  # any other id type: a dict of id -> (rows, first row); null ids never match
            self._rows_of: dict[Any, tuple[int, int]] = {}
            for row, value in enumerate(ids.to_pylist()):
                if value is not None:
                    count, first = self._rows_of.get(value, (0, row))
                    self._rows_of[value] = (count + 1, first)

    def lookup(self, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """For each id: whether the index holds it, and its row when it holds it exactly once (else -1)."""
        nothing = (np.zeros(len(ids), dtype=bool), np.full(len(ids), -1, dtype=np.int64))
        if self._numeric:
            if not pa.types.is_integer(ids.type) or not len(self._unique):
                return nothing
            valid = ids.is_valid().to_numpy(zero_copy_only=False)
            values = ids.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            position = np.minimum(np.searchsorted(self._unique, values), len(self._unique) - 1)
            known = valid & (self._unique[position] == values)
            single = known & (self._counts[position] == 1)
            return known, np.where(single, self._first[position], -1)
        found = [self._rows_of.get(value) if value is not None else None for value in ids.to_pylist()]
        known = np.array([entry is not None for entry in found], dtype=bool)
        rows = np.array([entry[1] if entry is not None and entry[0] == 1 else -1 for entry in found], dtype=np.int64)
        return known, rows


class PreviousKeys:
    """The previous version's key rows (ids, text hashes, compared columns, row addresses), indexed by id."""

    def __init__(self, rows: pa.Table, id_column: str) -> None:
        self.rows = rows.combine_chunks()
        self.addresses: np.ndarray = _ids(self.rows, ROW_ADDRESS).to_numpy(zero_copy_only=False)
        self.index = IdIndex(_ids(self.rows, id_column))


class ClassifyRows(beam.DoFn):  # type: ignore[misc]
    """Split each corpus table into rows to embed and unchanged rows, against the previous version's keys.

    The keys (ids, text hashes, compared columns and row addresses of every row of the version)
    are read from the dataset once per worker process and shared by its threads, as a side
    input would be, without passing through the runner.
    """

    def __init__(self, target: LanceTarget, version: int, id_column: str, compared_columns: Sequence[str]) -> None:
        self._target = target
        self._version = version
        self._id = id_column
        self._compared = [HASH_COLUMN, *compared_columns]
        self._shared = Shared()

    def setup(self) -> None:
        """Read the previous keys (or take them from another instance in this process)."""
        self._previous: PreviousKeys = self._shared.acquire(self._read_keys, tag=(self._target.uri, self._version))

    def _read_keys(self) -> PreviousKeys:
        dataset = self._target.open(self._version)
        if dataset is None:
            raise RuntimeError(f"{self._target.uri} has no version {self._version} to compare with")
        keys = dataset.to_table(columns=[self._id, *self._compared], with_row_address=True, scan_in_order=True)
        return PreviousKeys(keys, self._id)

    def process(self, table: pa.Table) -> Iterator[Any]:
        """Outputs ``to_embed`` (rows, texts included), ``kept``, ``seen_ids`` and ``tally``.

        ``kept``: ``(fragment id, offsets)`` of the previous rows that unchanged rows keep (an
        offset once per unchanged row). ``seen_ids``: a one-column table of the ids of the other
        embeddable rows whose id the previous version has.
        """
        previous = self._previous
        ids = _ids(table, self._id)
        embeddable = table.column(HASH_COLUMN).is_valid().to_numpy(zero_copy_only=False)
        known, previous_row = previous.index.lookup(ids)
        unchanged = np.zeros(len(table), dtype=bool)
        candidates = np.flatnonzero((previous_row >= 0) & embeddable)
        if len(candidates):
            rows = pa.array(previous_row[candidates])
            same = np.ones(len(candidates), dtype=bool)
            for name in self._compared:
                same &= _equal_or_both_null(
                    table.column(name).take(pa.array(candidates)).combine_chunks(),
                    previous.rows.column(name).take(rows).combine_chunks(),
                )
            unchanged[candidates[same]] = True
        yield beam.pvalue.TaggedOutput(TALLY, ("new", int((embeddable & ~known).sum())))
        yield beam.pvalue.TaggedOutput(TALLY, ("changed", int((embeddable & known & ~unchanged).sum())))
        yield beam.pvalue.TaggedOutput(TALLY, ("unchanged", int(unchanged.sum())))
        if (~unchanged).any():
            yield beam.pvalue.TaggedOutput(TO_EMBED, table.filter(pa.array(~unchanged)))
        if unchanged.any():
            addresses = previous.addresses[previous_row[unchanged]]
            yield from (beam.pvalue.TaggedOutput(KEPT, item) for item in by_fragment(addresses))
        seen = embeddable & known & ~unchanged
        if seen.any():
            yield beam.pvalue.TaggedOutput(SEEN_IDS, pa.table({self._id: ids.filter(pa.array(seen))}))


def by_fragment(addresses: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Row addresses as ``(fragment id, offsets)``, one item per fragment they point into."""
    fragments = addresses >> np.uint64(32)
    for fragment_id in np.unique(fragments):
        yield int(fragment_id), (addresses[fragments == fragment_id] & np.uint64(0xFFFFFFFF)).astype(np.int64)


class ReconcileFragment(_VersionReader):
    """For one previous fragment: delete every row no unchanged row keeps; copy rows kept more than once.

    The input is the fragment id with the offsets its unchanged current rows keep (an offset
    once per such row; none when no row of the fragment is kept). Only the one previous row of
    an id can be kept, by each unchanged current row of that id: a row kept ``n`` times is
    copied ``n - 1`` times, as a full embed would hold ``n`` rows. A deleted row whose id is in
    no ``seen_ids`` table has no embeddable current row: it counts as a deleted id.
    """

    def setup(self) -> None:
        """Open the dataset; no index of seen ids yet."""
        super().setup()
        self._seen_index: tuple[Sequence[pa.Table], IdIndex] | None = None

    def _seen(self, seen_ids: Sequence[pa.Table], id_type: pa.DataType) -> IdIndex:
        """The ``seen_ids`` tables as one index, built once per side input."""
        if self._seen_index is None or self._seen_index[0] is not seen_ids:
            seen = _concat(seen_ids)
            ids = _ids(seen, self._columns[0]) if seen is not None else pa.array([], id_type)
            self._seen_index = (seen_ids, IdIndex(ids))
        return self._seen_index[1]

    def process(self, item: tuple[int, Sequence[np.ndarray]], seen_ids: Sequence[pa.Table]) -> Iterator[Any]:
        """Tagged outputs: ``updated`` (fragment JSON) or ``removed`` (fragment id), ``copies`` and ``tally``."""
        from beam_m2v.transforms.lance_write import fragment_json

        fragment_id, parts = item
        kept, times = np.unique(np.concatenate([NO_ROWS, *parts]), return_counts=True)
        fragment = self._dataset.get_fragment(fragment_id)
        live = fragment.to_table(columns=self._columns, with_row_address=True)
        offsets = (live.column(ROW_ADDRESS).to_numpy() & np.uint64(0xFFFFFFFF)).astype(np.int64)
        if not np.isin(kept, offsets).all():
            raise RuntimeError(f"fragment {fragment_id}: an unchanged row keeps a previous row that is not there")
        deleted = ~np.isin(offsets, kept)
        ids = _ids(live, self._columns[0]).filter(pa.array(deleted))
        seen, _ = self._seen(seen_ids, ids.type).lookup(ids)
        yield beam.pvalue.TaggedOutput(TALLY, ("previous_rows", len(offsets)))
        yield beam.pvalue.TaggedOutput(TALLY, ("deleted", int((~seen).sum())))
        yield beam.pvalue.TaggedOutput(TALLY, ("previous_deleted", int(deleted.sum())))
        if deleted.any():
            updated = fragment.delete_rows([int(offset) for offset in offsets[deleted]])
            if updated is None:
                yield beam.pvalue.TaggedOutput(REMOVED, fragment_id)
            else:
                yield beam.pvalue.TaggedOutput(UPDATED, fragment_json(updated))
        if (times > 1).any():
            yield beam.pvalue.TaggedOutput(COPIES, (fragment_id, [np.repeat(kept, times - 1)]))


class CopyRows(_VersionReader):
    """Read the rows (all output columns) at given addresses of one fragment, repeated as often as asked."""

    def process(self, item: tuple[int, Sequence[np.ndarray]]) -> Iterator[pa.Table]:
        """One table with a row per requested offset (repeats included)."""
        fragment_id, parts = item
        wanted = np.concatenate(list(parts))
        table = self._dataset.get_fragment(fragment_id).to_table(columns=self._columns, with_row_address=True)
        offsets = (table.column(ROW_ADDRESS).to_numpy() & np.uint64(0xFFFFFFFF)).astype(np.int64)
        row_of = dict(zip(offsets.tolist(), range(len(offsets)), strict=True))
        yield table.select(self._columns).take(pa.array([row_of[int(offset)] for offset in wanted]))


@dataclass(frozen=True)
class RunRecord:
    """What the commit step writes about a run: where, and the facts known when it started."""

    output: str
    name: str
    started: str
    fields: tuple[tuple[str, Any], ...]
    #: Where Beam's file writer reaches the run's folder: the folder itself, or a link to it from a path
    #: without pattern characters (the writer matches its own temporary files by pattern).
    writes_through: str = ""

    @property
    def folder(self) -> str:
        """The run's folder inside the dataset (dead letters, manifest)."""
        return f"{self.output}/{RUNS_DIR}/{self.name}"

    @property
    def failed_prefix(self) -> str:
        """Prefix of the run's dead-letter shards, as Beam's file writer is given it."""
        return f"{self.writes_through or self.folder}/failed/failed"

    def real_path(self, path: str) -> str:
        """A path the writer reported, inside the run's folder itself."""
        if self.writes_through and path.startswith(self.writes_through + "/"):
            return self.folder + path[len(self.writes_through) :]
        return path

    @property
    def manifest_path(self) -> str:
        """The run's manifest."""
        return f"{self.folder}/{MANIFEST_NAME}"


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Write a JSON document on any Beam filesystem."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: str) -> dict[str, Any]:
    """Read a JSON document from any Beam filesystem."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        data: dict[str, Any] = json.loads(handle.read().decode("utf-8"))
    return data


class CommitRun(beam.DoFn):  # type: ignore[misc]
    """Check that every row is accounted for, commit the run's fragments as one version, write its record.

    ``read == embedded + failed`` must hold, where embedded counts the rows of the new
    fragments plus the unchanged rows kept from the previous version; and every previous
    row must be either kept or deleted. Otherwise nothing is committed.
    """

    def __init__(self, plan: LanceCommitPlan, record: RunRecord) -> None:
        self._plan = plan
        self._record = record

    def process(
        self,
        _: object,
        fragments: Sequence[str],
        counts: Mapping[str, int],
        dead_letter_files: Sequence[str],
        updated: Sequence[str] = (),
        removed: Sequence[int] = (),
        copies: Sequence[str] = (),
    ) -> Iterator[dict[str, Any]]:
        """Commit once; yield the run's manifest (with the version it made)."""
        fragments = [*fragments, *copies]
        count = dict(counts)
        copied = count.get("copied", 0)
        appended = sum(fragment_rows(fragment) for fragment in set(fragments)) - copied
        unchanged = count.get("unchanged", 0)
        failed = count.get("read_failed", 0) + count.get("embed_failed", 0)
        read = count.get("rows", 0) + count.get("read_failed", 0)
        if read != appended + unchanged + failed:
            raise RuntimeError(
                f"row accounting mismatch: read {read} rows but wrote {appended} vectors, kept {unchanged} "
                f"and {failed} dead letters; nothing was committed"
            )
        previous = count.get("previous_rows", 0)
        deleted_rows = count.get("previous_deleted", 0)
        if previous != unchanged - copied + deleted_rows:
            raise RuntimeError(
                f"row accounting mismatch: the previous version's {previous} rows are neither kept "
                f"({unchanged - copied}) nor deleted ({deleted_rows}); nothing was committed"
            )
        rows = {"read": read, "embedded": appended + unchanged, "failed": failed}
        if self._plan.operation == "update":
            rows |= {name: count.get(name, 0) for name in ("new", "changed", "unchanged", "deleted")}
            rows |= {"encoded": appended, "previous_read": previous, "previous_rows_deleted": deleted_rows}
            if copied:
                rows["unchanged_copies"] = copied
        started = datetime.datetime.fromisoformat(self._record.started)
        ended = datetime.datetime.now(datetime.timezone.utc)
        manifest: dict[str, Any] = {
            **dict(self._record.fields),
            "output": self._record.output,
            "run": self._record.name,
            "rows": rows,
            "operation": self._plan.operation,
            "previous_version": self._plan.expected_version or None,
            "dead_letter_files": sorted(self._record.real_path(path) for path in dead_letter_files),
            "started": self._record.started,
            "ended": ended.isoformat(),
            "seconds": round((ended - started).total_seconds(), 3),
        }
        commit = commit_fragments(
            self._plan,
            fragments,
            updated_fragments=updated,
            removed_fragment_ids=removed,
            properties={RUN_PROPERTY: json.dumps(manifest, sort_keys=True, default=str)},
        )
        if commit.already_committed:  # a retry: the first attempt's record is the run's record
            manifest = run_record_of(self._plan.target, commit.version) or manifest
        manifest["version"] = commit.version
        write_json(self._record.manifest_path, manifest)
        yield manifest


def run_record_of(target: LanceTarget, version: int) -> dict[str, Any] | None:
    """The run record committed with ``version`` (None for versions beam-m2v did not make)."""
    dataset = target.open(version)
    transaction = dataset.read_transaction(version) if dataset is not None else None
    properties = (transaction.transaction_properties or {}) if transaction is not None else {}
    if RUN_PROPERTY not in properties:
        return None
    record: dict[str, Any] = json.loads(properties[RUN_PROPERTY])
    record["version"] = version
    return record
