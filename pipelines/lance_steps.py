"""The Beam steps of a Lance run: previous keys, the join by id, row deletions, and the one commit.

A re-embedding run reads the ids, text hashes and kept columns of the dataset's latest
version fragment by fragment, with each row's address (fragment id and offset). Rows of the
corpus and of the previous version meet by id in buckets; an id is unchanged when it has one
row on each side with the same text hash and kept values. Every other current row is
embedded and appended; every previous row of an id that is not unchanged is deleted (a
deletion file per touched fragment, written by the workers). The commit step then checks
that every row is accounted for and commits the appended and updated fragments as one
version. Vectors never travel through the pipeline unless they are new.
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

from beam_m2v.transforms.lance_write import LanceCommitPlan, LanceTarget, commit_fragments, fragment_rows
from pipelines.content_hash import HASH_COLUMN

#: The row address column Lance adds when asked (``fragment id << 32 | offset``).
ROW_ADDRESS = "_rowaddr"
#: Tagged outputs of ``JoinForLance`` and ``DeleteRows``.
TO_EMBED, DELETES, TALLY = "to_embed", "deletes", "tally"
UPDATED, REMOVED = "updated", "removed"
_CURRENT, _PREVIOUS = "current", "previous"
#: Where a run's record and dead letters go, inside the dataset's folder (Lance ignores it).
RUNS_DIR = "_beam_m2v/runs"
MANIFEST_NAME = "manifest.json"
#: Transaction property holding the run's record, committed atomically with its version.
RUN_PROPERTY = "beam_m2v_run"


def tally(name: str) -> Any:
    """A ``Map`` turning tables into ``(name, rows)`` and anything else into ``(name, 1)``."""
    return beam.Map(lambda element: (name, element.num_rows if isinstance(element, pa.Table) else 1))


class ReadFragmentKeys(beam.DoFn):  # type: ignore[misc]
    """Read the key columns of one fragment of a dataset version, with each row's address."""

    def __init__(self, target: LanceTarget, version: int, columns: Sequence[str]) -> None:
        self._target = target
        self._version = version
        self._columns = list(columns)

    def setup(self) -> None:
        """Open the dataset at the version being re-embedded."""
        self._dataset = self._target.open(self._version)

    def process(self, fragment_id: int) -> Iterator[pa.Table]:
        """The fragment's ``columns`` and ``_rowaddr`` (deleted rows excluded)."""
        fragment = self._dataset.get_fragment(fragment_id)
        yield fragment.to_table(columns=self._columns, with_row_address=True)


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables).combine_chunks() if tables else None


def _ids(table: pa.Table, id_column: str) -> pa.Array:
    return table.column(id_column).combine_chunks()


def _equal_or_both_null(left: pa.Array, right: pa.Array) -> np.ndarray:
    """Element-wise equality where two nulls are equal."""
    same = pc.fill_null(pc.equal(left, right), False).to_numpy(zero_copy_only=False)
    both_null = pc.and_(pc.is_null(left), pc.is_null(right)).to_numpy(zero_copy_only=False)
    return np.asarray(same | both_null, dtype=bool)


class JoinForLance(beam.DoFn):  # type: ignore[misc]
    """Decide, for one bucket of ids, which current rows to embed and which previous rows to delete."""

    def __init__(self, id_column: str, compared_columns: Sequence[str]) -> None:
        self._id = id_column
        self._compared = [HASH_COLUMN, *compared_columns]

    def process(self, item: tuple[int, Sequence[tuple[str, pa.Table]]]) -> Iterator[Any]:
        """Join one bucket's current and previous rows by id.

        Tagged outputs: ``to_embed`` (current rows: new, changed, and rows without a usable
        text, which become dead letters), ``deletes`` (``_rowaddr`` of previous rows to delete)
        and ``tally`` counts: new, changed, unchanged, deleted (ids with no vector any more).
        """
        _, parts = item
        current = _concat([table for side, table in parts if side == _CURRENT])
        previous = _concat([table for side, table in parts if side == _PREVIOUS])
        unchanged = np.zeros(0 if current is None else len(current), dtype=bool)
        if current is not None and previous is not None and len(previous):
            unchanged = self._unchanged(current, previous)
        unchanged_ids = (
            _ids(current, self._id).filter(pa.array(unchanged))
            if current is not None
            else pa.array([], previous.schema.field(self._id).type if previous is not None else pa.null())
        )
        if current is not None:
            embeddable = current.column(HASH_COLUMN).is_valid().to_numpy(zero_copy_only=False)
            known = (
                pc.is_in(current.column(self._id), value_set=_ids(previous, self._id)).to_numpy(zero_copy_only=False)
                if previous is not None
                else np.zeros(len(current), dtype=bool)
            )
            yield beam.pvalue.TaggedOutput(TALLY, ("new", int((embeddable & ~known).sum())))
            yield beam.pvalue.TaggedOutput(TALLY, ("changed", int((embeddable & known & ~unchanged).sum())))
            yield beam.pvalue.TaggedOutput(TALLY, ("unchanged", int(unchanged.sum())))
            if (~unchanged).any():
                yield beam.pvalue.TaggedOutput(TO_EMBED, current.filter(pa.array(~unchanged)))
        if previous is not None and len(previous):
            ids = previous.column(self._id)
            deleted = pc.invert(pc.is_in(ids, value_set=unchanged_ids)).to_numpy(zero_copy_only=False)
            kept_ids = (
                _ids(current, self._id).filter(current.column(HASH_COLUMN).is_valid().combine_chunks())
                if current is not None
                else unchanged_ids
            )
            vanished = pc.invert(pc.is_in(ids, value_set=kept_ids)).to_numpy(zero_copy_only=False)
            yield beam.pvalue.TaggedOutput(TALLY, ("deleted", int(vanished.sum())))
            if deleted.any():
                yield beam.pvalue.TaggedOutput(DELETES, previous.select([ROW_ADDRESS]).filter(pa.array(deleted)))

    def _unchanged(self, current: pa.Table, previous: pa.Table) -> np.ndarray:
        """Current rows whose id has exactly one row on each side, with equal hash and kept values."""
        current_keys = pa.table({"key": current.column(self._id), "current_row": np.arange(len(current))})
        previous_keys = pa.table({"key": previous.column(self._id), "previous_row": np.arange(len(previous))})
        current_counts = current_keys.group_by("key", use_threads=False).aggregate([("current_row", "count")])
        previous_counts = previous_keys.group_by("key", use_threads=False).aggregate(
            [("previous_row", "count"), ("previous_row", "min")]
        )
        joined = (
            current_keys.join(current_counts, "key", join_type="left outer", use_threads=False)
            .join(previous_counts, "key", join_type="left outer", use_threads=False)
            .sort_by("current_row")
        )
        single = pc.and_(
            pc.equal(joined.column("current_row_count"), 1),
            pc.fill_null(pc.equal(joined.column("previous_row_count"), 1), False),
        )
        candidates = np.flatnonzero(single.to_numpy(zero_copy_only=False))
        unchanged = np.zeros(len(current), dtype=bool)
        if not len(candidates):
            return unchanged
        previous_rows = joined.column("previous_row_min").take(pa.array(candidates))
        same = current.column(HASH_COLUMN).take(pa.array(candidates)).is_valid().to_numpy(zero_copy_only=False)
        for name in self._compared:
            same &= _equal_or_both_null(
                current.column(name).take(pa.array(candidates)).combine_chunks(),
                previous.column(name).take(previous_rows).combine_chunks(),
            )
        unchanged[candidates[same]] = True
        return unchanged


class SplitByFragment(beam.DoFn):  # type: ignore[misc]
    """Key row addresses by their fragment: ``(fragment id, offsets)``."""

    def process(self, table: pa.Table) -> Iterator[tuple[int, np.ndarray]]:
        """One item per fragment the table's addresses point into."""
        addresses = table.column(ROW_ADDRESS).to_numpy()
        fragments = addresses >> np.uint64(32)
        for fragment_id in np.unique(fragments):
            offsets = (addresses[fragments == fragment_id] & np.uint64(0xFFFFFFFF)).astype(np.int64)
            yield int(fragment_id), offsets


class DeleteRows(beam.DoFn):  # type: ignore[misc]
    """Write a fragment's new deletion file; emit its metadata (or its id, when no row is left)."""

    def __init__(self, target: LanceTarget, version: int) -> None:
        self._target = target
        self._version = version

    def setup(self) -> None:
        """Open the dataset at the version the deletions are made from."""
        self._dataset = self._target.open(self._version)

    def process(self, item: tuple[int, Sequence[np.ndarray]]) -> Iterator[Any]:
        """Mark the offsets deleted (``updated``: fragment JSON) or report the fragment empty (``removed``)."""
        from beam_m2v.transforms.lance_write import fragment_json

        fragment_id, parts = item
        offsets = np.unique(np.concatenate(list(parts)))
        updated = self._dataset.get_fragment(fragment_id).delete_rows([int(offset) for offset in offsets])
        if updated is None:
            yield beam.pvalue.TaggedOutput(REMOVED, fragment_id)
        else:
            yield beam.pvalue.TaggedOutput(UPDATED, fragment_json(updated))


@dataclass(frozen=True)
class RunRecord:
    """What the commit step writes about a run: where, and the facts known when it started."""

    output: str
    name: str
    started: str
    fields: tuple[tuple[str, Any], ...]

    @property
    def folder(self) -> str:
        """The run's folder inside the dataset (dead letters, manifest)."""
        return f"{self.output}/{RUNS_DIR}/{self.name}"

    @property
    def failed_prefix(self) -> str:
        """Prefix of the run's dead-letter shards."""
        return f"{self.folder}/failed/failed"

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
    ) -> Iterator[dict[str, Any]]:
        """Commit once; yield the run's manifest (with the version it made)."""
        count = dict(counts)
        appended = sum(fragment_rows(fragment) for fragment in set(fragments))
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
        if previous != unchanged + deleted_rows:
            raise RuntimeError(
                f"row accounting mismatch: the previous version's {previous} rows are neither kept ({unchanged}) "
                f"nor deleted ({deleted_rows}); nothing was committed"
            )
        rows = {"read": read, "embedded": appended + unchanged, "failed": failed}
        if self._plan.operation == "update":
            rows |= {name: count.get(name, 0) for name in ("new", "changed", "unchanged", "deleted")}
            rows |= {"encoded": appended, "previous_read": previous, "previous_rows_deleted": deleted_rows}
        started = datetime.datetime.fromisoformat(self._record.started)
        ended = datetime.datetime.now(datetime.timezone.utc)
        manifest: dict[str, Any] = {
            **dict(self._record.fields),
            "output": self._record.output,
            "run": self._record.name,
            "rows": rows,
            "operation": self._plan.operation,
            "previous_version": self._plan.expected_version or None,
            "dead_letter_files": sorted(dead_letter_files),
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
