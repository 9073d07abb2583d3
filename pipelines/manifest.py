"""The manifest of a finished run: what it read, what it wrote, with which model, and when.

``write_run_manifest`` counts the rows written into the staging folder, checks that every row read
is accounted for (read = embedded + failed; a mismatch stops the run before anything is published)
and writes ``_manifest.json``. Where the file lives and how it is read back is ``pipelines.outputs``'s.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from beam_m2v.transforms.metrics import NAMESPACE, ROWS_READ
from pipelines.outputs import RunFolders, count_output_rows, write_manifest
from pipelines.prepare import PreparedRun


def counter_total(result: PipelineResult, name: str) -> int:
    """A beam_m2v counter summed over steps."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    return int(sum(item.committed or 0 for item in query["counters"]))


def write_run_manifest(
    prepared: PreparedRun,
    folders: RunFolders,
    result: PipelineResult,
    started: datetime.datetime,
    *,
    extra_rows: Mapping[str, int] | None = None,
    extra_fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Count what was written, check that every row is accounted for, and write the manifest.

    ``extra_rows`` / ``extra_fields`` add a program's own counts and facts (``reembed``'s).
    """
    embedded, failed = count_output_rows(folders.staging)
    rows_read = counter_total(result, ROWS_READ)
    if rows_read != embedded + failed:
        raise RuntimeError(
            f"row accounting mismatch: read {rows_read} rows but wrote {embedded} vectors and {failed} dead letters"
        )
    ended = datetime.datetime.now(datetime.timezone.utc)
    manifest = {
        "input": prepared.input.pattern,
        "input_format": prepared.input.format,
        "input_files": prepared.files,
        **prepared.input.id_facts,
        **(extra_fields or {}),
        "rows": {"read": rows_read, "embedded": embedded, "failed": failed, **(extra_rows or {})},
        **prepared.model_facts.as_dict(),
        "started": started.isoformat(),
        "ended": ended.isoformat(),
        "seconds": round((ended - started).total_seconds(), 3),
    }
    write_manifest(folders.staging, manifest)
    return manifest
