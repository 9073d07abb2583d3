"""Writing vector tables to Parquet shards, with the encodings float vectors need.

Beam's ``WriteToParquetBatched`` opens ``pq.ParquetWriter`` with pyarrow's defaults: dictionary
encoding on every column, which for 256 random-looking floats per row is wasted work (the
dictionary overflows and falls back to plain, after trying) and no ``BYTE_STREAM_SPLIT``.
This sink writes the vector, id and hash columns without a dictionary and the vector values
byte-stream-split (the byte planes of float32 compress far better under zstd), measured
with 256-dim vectors of text paragraphs: 882 instead of 984 bytes per row, 27% less write
time. Readers need Parquet's BYTE_STREAM_SPLIT encoding (pyarrow 14+, Polars after 0.19,
DuckDB 0.9+, Spark 3.2+; see docs/output-format.md); ``byte_stream_split=False`` writes
plain pages for older ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes


class _OpenShard:
    """One shard being written: its file, its Parquet writer, and the table being written in the background.

    ``write_table`` spends its time compressing, without the GIL, so it runs on a thread of its
    own while the bundle goes on reading and embedding the next table. At most one table is in
    flight; an error surfaces at the next write or at close.
    """

    def __init__(self, writer: pq.ParquetWriter, handle: Any) -> None:
        self.writer = writer
        self.handle = handle
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="beam-m2v-parquet")
        self._pending: Future[None] | None = None

    def write(self, table: pa.Table) -> None:
        """Start writing ``table`` once the previous one is written."""
        self._wait()
        self._pending = self._thread.submit(self.writer.write_table, table)

    def close(self) -> None:
        """Finish the last write and the Parquet footer."""
        try:
            self._wait()
        finally:
            self._thread.shutdown(wait=True)
        self.writer.close()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


class VectorParquetSink(filebasedsink.FileBasedSink):
    """A file-based sink of ``pyarrow.Table``s: one zstd Parquet file per shard, one row group per table."""

    def __init__(
        self,
        file_path_prefix: str,
        schema: pa.Schema,
        *,
        vector_columns: Sequence[str],
        undictionary_columns: Sequence[str] = (),
        byte_stream_split: bool = True,
        file_name_suffix: str = ".parquet",
    ) -> None:
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=file_name_suffix,
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,
        )
        self._schema = schema
        undictionary = {*vector_columns, *undictionary_columns}
        self._dictionary_columns = [name for name in schema.names if name not in undictionary]
        self._split_columns = [f"{name}.list.element" for name in vector_columns] if byte_stream_split else []

    def parquet_writer(self, where: Any) -> pq.ParquetWriter:
        """A Parquet writer with this sink's settings, on a path or open file."""
        return pq.ParquetWriter(
            where,
            self._schema,
            compression="zstd",
            use_compliant_nested_type=True,
            use_dictionary=self._dictionary_columns,
            use_byte_stream_split=self._split_columns or False,
        )

    def open(self, temp_path: str) -> _OpenShard:
        """Open one shard's file and its Parquet writer."""
        handle = super().open(temp_path)
        return _OpenShard(self.parquet_writer(handle), handle)

    def write_record(self, file_handle: _OpenShard, value: pa.Table) -> None:
        """Append one table as row group(s), written in the background."""
        file_handle.write(value)

    def close(self, file_handle: _OpenShard) -> None:
        """Finish the Parquet footer, then the file."""
        try:
            file_handle.close()
        finally:
            super().close(file_handle.handle)
