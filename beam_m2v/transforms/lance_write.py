"""``WriteToLance``: a PCollection of Arrow tables (or dicts) into a Lance dataset, committed once.

It follows Lance's distributed write, so it runs on any Beam runner (Dataflow, Flink, locally):

1. Workers write data files with ``lance.fragment.write_fragments``. Every bundle emits the
   metadata of the fragments it wrote (as JSON) and commits nothing.
2. One commit step receives the metadata of all fragments as a side input, after every bundle
   has finished, and commits them in one Lance transaction: one new version of the dataset.

Beam keeps the output of a bundle's successful attempt only, so the fragments of a failed or
retried attempt are never committed: their files stay unreferenced until Lance's
``cleanup_old_versions`` removes them. The transaction carries an id chosen when the pipeline
is built; a commit step that is retried after it succeeded finds its own transaction in the
dataset's history and does not commit a second time. Until the commit, readers see the
previous version, and a crash before it leaves the dataset as it was.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import AsList, PCollection
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beam_m2v.errors import MissingDependencyError
from beam_m2v.transforms.metrics import LANCE_FRAGMENTS_WRITTEN, LANCE_ROWS_WRITTEN, NAMESPACE

#: How ``WriteToLance`` commits: a new dataset, rows added to the latest version, or a new
#: version holding only these rows (earlier versions stay readable).
MODES = ("create", "append", "overwrite")
#: Rows gathered in a worker before they are written as one or more fragments.
DEFAULT_ROWS_PER_FRAGMENT = 100_000
#: How many recent versions a retried commit searches for its own transaction.
_RECENT_VERSIONS = 100


def import_lance() -> Any:
    """The ``lance`` module, or an error naming the extra to install."""
    try:
        import lance
    except ImportError as error:
        raise MissingDependencyError("Lance datasets", "pylance", "lance") from error
    return lance


class LanceCommitConflict(RuntimeError):
    """The dataset changed in a way this commit must not be combined with; nothing was committed."""


@dataclass(frozen=True)
class LanceTarget:
    """A Lance dataset's URI (a local path, ``s3://``, ``gs://``...) and the storage options to reach it."""

    uri: str
    storage_options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, uri: str, storage_options: Mapping[str, str] | None = None) -> LanceTarget:
        """A target from a URI and a plain mapping of Lance storage options."""
        return cls(uri.rstrip("/"), tuple(sorted((storage_options or {}).items())))

    def options(self) -> dict[str, str] | None:
        """The storage options as Lance takes them."""
        return dict(self.storage_options) or None

    def open(self, version: int | None = None) -> Any:
        """The dataset (its latest version, or ``version``), or None when there is no dataset at the URI."""
        lance = import_lance()
        try:
            return lance.dataset(self.uri, version=version, storage_options=self.options())
        except ValueError as error:
            if "not found" in str(error).lower():
                return None
            raise


@dataclass(frozen=True)
class LanceCommit:
    """What a commit did: the version it made, its operation, the rows and fragments it added."""

    uri: str
    version: int
    operation: str
    rows_added: int
    fragments_added: int
    already_committed: bool = False


@dataclass(frozen=True)
class LanceCommitPlan:
    """Everything the commit step needs, fixed when the pipeline is built.

    ``operation`` is ``create`` (the dataset must not exist), ``append``, ``overwrite`` (a new
    version holding only the new fragments, with ``schema``), or ``update`` (new fragments plus
    deletions in existing ones, in one version). ``expected_version``, when set, makes the
    commit refuse to run unless the dataset's latest version is still that one (0: no dataset).
    """

    target: LanceTarget
    schema: pa.Schema
    operation: str
    transaction_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    expected_version: int | None = None
    properties: tuple[tuple[str, str], ...] = ()


def fragment_json(fragment: Any) -> str:
    """A fragment's metadata as a JSON string (the form that travels between workers)."""
    return json.dumps(fragment.to_json(), sort_keys=True)


def fragment_rows(fragment: str) -> int:
    """Physical rows of a fragment given as JSON."""
    return int(json.loads(fragment)["physical_rows"])


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """The schema's columns of ``table``, in its order and types; a lossy cast is an error."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"table has no column(s) {missing} of the Lance schema (columns: {table.column_names})")
    columns = [table.column(name).cast(schema.field(name).type, safe=True) for name in schema.names]
    return pa.Table.from_arrays(columns, schema=schema)


class WriteLanceFragments(beam.DoFn):  # type: ignore[misc]
    """Write tables (or dicts) as Lance fragments; emit each fragment's metadata as JSON.

    Rows are gathered up to ``rows_per_fragment`` per bundle, then written. ``new_schema``
    writes fragments for a new version with ``schema`` (create / overwrite), where appending
    checks them against the existing dataset's schema.
    """

    def __init__(
        self,
        target: LanceTarget,
        schema: pa.Schema,
        *,
        new_schema: bool = False,
        rows_per_fragment: int = DEFAULT_ROWS_PER_FRAGMENT,
    ) -> None:
        self._target = target
        self._schema = schema
        self._mode = "overwrite" if new_schema else "append"
        self._rows_per_fragment = rows_per_fragment

    def setup(self) -> None:
        """Import Lance and create the metrics."""
        self._lance = import_lance()
        self._rows_written = Metrics.counter(NAMESPACE, LANCE_ROWS_WRITTEN)
        self._fragments_written = Metrics.counter(NAMESPACE, LANCE_FRAGMENTS_WRITTEN)

    def start_bundle(self) -> None:
        """Start with nothing gathered."""
        self._tables: list[pa.Table] = []
        self._dicts: list[Mapping[str, Any]] = []
        self._rows = 0

    def process(self, element: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> Iterator[str]:
        """Gather one table or dict; write what is gathered once it reaches ``rows_per_fragment`` rows."""
        if isinstance(element, (pa.Table, pa.RecordBatch)):
            if element.num_rows:
                self._tables.append(conform(element, self._schema))
                self._rows += element.num_rows
        elif isinstance(element, Mapping):
            self._dicts.append(element)
            self._rows += 1
        else:
            raise TypeError(f"WriteToLance takes pyarrow Tables, RecordBatches or dicts, not {type(element).__name__}")
        if self._rows >= self._rows_per_fragment:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        """Write what is left of the bundle."""
        for fragment in self._flush():
            yield WindowedValue(fragment, GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _flush(self) -> Iterator[str]:
        tables = self._tables
        if self._dicts:
            tables.append(pa.Table.from_pylist(list(self._dicts), schema=self._schema))
        self._tables, self._dicts, self._rows = [], [], 0
        if not tables:
            return
        data = pa.concat_tables(tables)
        fragments = self._lance.fragment.write_fragments(
            data,
            self._target.uri,
            schema=self._schema,
            mode=self._mode,
            storage_options=self._target.options(),
        )
        self._rows_written.inc(data.num_rows)
        self._fragments_written.inc(len(fragments))
        for fragment in fragments:
            yield fragment_json(fragment)


def committed_version(dataset: Any, transaction_id: str, since: int | None) -> int | None:
    """The version whose transaction is ``transaction_id``, searched from the latest back to ``since``."""
    version = int(dataset.version)
    floor = since if since is not None else max(0, version - _RECENT_VERSIONS)
    while version > floor:
        try:
            transaction = dataset.read_transaction(version)
        except Exception:  # a version removed by cleanup_old_versions: nothing older to search
            return None
        if transaction is not None and transaction.uuid == transaction_id:
            return version
        version -= 1
    return None


def _check_expected(plan: LanceCommitPlan, latest: Any) -> None:
    """Refuse to commit when the dataset is not where the plan expects it."""
    current = 0 if latest is None else int(latest.version)
    if plan.operation == "create" and latest is not None:
        raise LanceCommitConflict(f"{plan.target.uri} already exists (version {current}); nothing was committed")
    if plan.expected_version is not None and current != plan.expected_version:
        found = f"version {current}" if latest is not None else "no dataset"
        raise LanceCommitConflict(
            f"{plan.target.uri} changed while this run worked: it started from version {plan.expected_version} "
            f"and now holds {found} (another writer committed); nothing was committed"
        )


def _sentinel(read: Any, touched: set[int]) -> list[Any]:
    """The unchanged metadata of the read version's lowest fragment, unless the update already touches it.

    Every update carries that fragment, so of two updates made from the same version Lance
    refuses the second as a conflict, instead of merging their deletions and appends.
    """
    fragment_ids = [int(fragment.fragment_id) for fragment in read.get_fragments()]
    if not fragment_ids or min(fragment_ids) in touched:
        return []
    return [read.get_fragment(min(fragment_ids)).metadata]


def commit_fragments(
    plan: LanceCommitPlan,
    new_fragments: Iterable[str],
    *,
    updated_fragments: Iterable[str] = (),
    removed_fragment_ids: Iterable[int] = (),
    properties: Mapping[str, str] | None = None,
) -> LanceCommit:
    """Commit fragments (JSON metadata) as one version, once; see ``LanceCommitPlan`` for the operations.

    A plan whose transaction is already in the dataset's history is not committed again.
    """
    lance = import_lance()
    from lance.fragment import FragmentMetadata

    target = plan.target
    latest = target.open()
    new = sorted(set(new_fragments))
    rows = sum(fragment_rows(fragment) for fragment in new)
    if latest is not None:
        done = committed_version(latest, plan.transaction_id, plan.expected_version)
        if done is not None:
            return LanceCommit(target.uri, done, plan.operation, rows, len(new), already_committed=True)
    _check_expected(plan, latest)
    fragments = [FragmentMetadata.from_json(fragment) for fragment in new]
    read_version = (
        plan.expected_version if plan.expected_version is not None else 0 if latest is None else latest.version
    )
    operation = plan.operation
    if operation == "append" and latest is None:
        operation = "create"
    if operation in ("create", "overwrite"):
        op = lance.LanceOperation.Overwrite(plan.schema, fragments)
    elif operation == "append":
        op = lance.LanceOperation.Append(fragments)
    elif operation == "update":
        if latest is None or plan.expected_version is None:
            raise ValueError("an update needs an existing dataset and the version its changes were made from")
        updated = [FragmentMetadata.from_json(fragment) for fragment in sorted(set(updated_fragments))]
        removed = sorted(set(removed_fragment_ids))
        touched = {int(fragment.id) for fragment in updated} | set(removed)
        op = lance.LanceOperation.Update(
            removed_fragment_ids=removed,
            updated_fragments=updated + _sentinel(target.open(read_version), touched),
            new_fragments=fragments,
        )
    else:
        raise ValueError(f"unknown Lance commit operation {plan.operation!r}")
    transaction = lance.Transaction(
        read_version=read_version,
        operation=op,
        uuid=plan.transaction_id,
        transaction_properties={**dict(plan.properties), **(properties or {})},
    )
    try:
        dataset = lance.LanceDataset.commit(target.uri, transaction, storage_options=target.options())
    except lance.commit.CommitConflictError as error:
        raise LanceCommitConflict(
            f"{target.uri}: another writer committed since version {read_version}; nothing was committed ({error})"
        ) from error
    return LanceCommit(target.uri, int(dataset.version), operation, rows, len(new))


def _commit_once(_: object, plan: LanceCommitPlan, fragments: Sequence[str]) -> LanceCommit:
    return commit_fragments(plan, fragments)


class WriteToLance(beam.PTransform[PCollection[Any], PCollection[LanceCommit]]):
    """Write a PCollection of ``pyarrow.Table``s, ``RecordBatch``es or dicts into a Lance dataset.

    Example::

        schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), 64))])
        commits = tables | beam_m2v.WriteToLance("vectors.lance", schema, mode="overwrite")

    ``mode``: ``create`` (fail if the dataset exists), ``append`` (create it if missing) or
    ``overwrite`` (a new version with only these rows; earlier versions stay readable).
    ``storage_options`` reach object stores (Lance's keys: ``aws_endpoint``, ``aws_region``...).
    ``expected_version`` makes the commit fail, committing nothing, if the dataset's latest
    version is no longer that one when the rows are written (0: the dataset must not exist).
    Columns not in ``schema`` are not written. The output is one ``LanceCommit``.
    Batch pipelines only (bounded input, global window).
    """

    def __init__(
        self,
        uri: str,
        schema: pa.Schema,
        *,
        mode: str = "create",
        storage_options: Mapping[str, str] | None = None,
        expected_version: int | None = None,
        rows_per_fragment: int = DEFAULT_ROWS_PER_FRAGMENT,
        transaction_properties: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        import_lance()  # fail while the pipeline is built, not on the workers
        self._target = LanceTarget.of(uri, storage_options)
        self._schema = schema
        self._mode = mode
        self._expected_version = expected_version
        self._rows_per_fragment = rows_per_fragment
        self._properties = tuple(sorted((transaction_properties or {}).items()))

    def expand(self, pcoll: PCollection[Any]) -> PCollection[LanceCommit]:
        """Write fragments on the workers, then commit them all in one step."""
        plan = LanceCommitPlan(
            self._target,
            self._schema,
            self._mode,
            expected_version=self._expected_version,
            properties=self._properties,
        )
        fragments = pcoll | "WriteFragments" >> beam.ParDo(
            WriteLanceFragments(
                self._target, self._schema, new_schema=self._mode != "append", rows_per_fragment=self._rows_per_fragment
            )
        ).with_output_types(str)
        commits: PCollection[LanceCommit] = (
            pcoll.pipeline
            | "CommitOnce" >> beam.Create([None])
            | "Commit" >> beam.Map(_commit_once, plan, AsList(fragments)).with_output_types(LanceCommit)
        )
        return commits
