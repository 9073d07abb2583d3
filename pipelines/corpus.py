"""The corpus in a pipeline: tables read from the input files (with a text hash), then embedded.

``read_corpus`` reads Parquet row groups or JSON Lines files, spread over the workers, into tables
of at most ``--batch-size`` rows; a row that cannot be read becomes a dead letter. ``embed_tables``
adds each table's vectors; a row whose text cannot be embedded becomes a dead letter.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.pvalue import PCollection

from beam_m2v.transforms.dead_letters import FAILED_TAG
from beam_m2v.transforms.embed_tables import EmbedTables
from pipelines.columns import EMBEDDING_COLUMN
from pipelines.content_hash import with_text_hash
from pipelines.inputs import ListRowGroups, ReadJsonLines, ReadParquetRows
from pipelines.prepare import PreparedRun


def read_corpus(pipeline: beam.Pipeline, prepared: PreparedRun) -> tuple[PCollection[pa.Table], list[PCollection[Any]]]:
    """Tables of the corpus (with a text_hash column), and the dead letters of unreadable rows."""
    spec = prepared.input
    read_schema = prepared.layout.read_schema(spec)
    files = pipeline | "Files" >> beam.Create(prepared.files)
    if spec.format == "parquet":
        parsed = (
            files
            | "RowGroups" >> beam.ParDo(ListRowGroups())
            | "Spread" >> beam.Reshuffle()
            | "ReadParquet"
            >> beam.ParDo(ReadParquetRows(spec, read_schema))
            .with_output_types(pa.Table)
            .with_outputs(FAILED_TAG, main="tables")
        )
    else:
        parsed = (
            files
            | "Spread" >> beam.Reshuffle()
            | "ReadJsonl"
            >> beam.ParDo(ReadJsonLines(spec, read_schema, arrow_exact=prepared.layout.arrow_exact))
            .with_output_types(pa.Table)
            .with_outputs(FAILED_TAG, main="tables")
        )
    tables, read_failures = parsed.tables, [parsed[FAILED_TAG]]
    hashed = tables | "HashTexts" >> beam.Map(with_text_hash, spec.text_column).with_output_types(pa.Table)
    return hashed, read_failures


def embed_tables(
    tables: PCollection[pa.Table], prepared: PreparedRun
) -> tuple[PCollection[pa.Table], PCollection[Any]]:
    """The tables with their vectors in ``EMBEDDING_COLUMN``, and the dead letters of rows that failed."""
    embedded, failed = tables | "Embed" >> EmbedTables(
        prepared.model_spec, text_column=prepared.input.text_column, output_column=EMBEDDING_COLUMN
    )
    return embedded, failed
