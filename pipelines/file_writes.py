"""Writing a PCollection through a file-based sink in one grouping step: ``WriteFiles``.

Beam's ``Write`` of a ``FileBasedSink`` (``iobase.WriteImpl``) makes the sink's temporary folder,
writes the bundles, pre-finalizes and finalizes in four steps joined by side inputs. On Beam's
local runner each is a stage of its own, which costs 0.04-0.07 s more per sink in every run, however
small (``bench/writes.py``), and a run writes two to five sinks. ``WriteFiles`` keeps what ``WriteImpl``
guarantees with one grouping step:

* every bundle writes its own temporary file (``sink.open_writer``, a fresh uuid per file);
* only the files of bundles that succeeded reach the grouping step, so a retried bundle's rows
  are never written twice;
* one finalize, after every bundle (``sink.pre_finalize``, ``sink.finalize_write``), renames
  them to the final shard names and removes the temporary folder; run again after a failure
  part way, it finishes the renaming;
* an empty input still gets one empty shard, unless the sink skips empty outputs.

The sink's temporary folder is made when the pipeline is built (``sink.initialize_write``), so the
launcher must be able to write where the sink writes; a run that fails leaves it where the sink
writes, as ``WriteImpl`` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import PCollection
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue


class JsonLinesSink(FileBasedSink):
    """A file-based sink of JSON lines (``str``, without their newline): UTF-8, one line per element."""

    def __init__(self, file_path_prefix: str, *, file_name_suffix: str = ".jsonl", skip_if_empty: bool = False) -> None:
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=file_name_suffix,
            mime_type="application/jsonl",
            compression_type=CompressionTypes.UNCOMPRESSED,
            skip_if_empty=skip_if_empty,
        )

    def write_record(self, file_handle: Any, value: str) -> None:
        """Write ``value`` and a newline."""
        file_handle.write(value.encode("utf-8") + b"\n")


class _WriteBundles(beam.DoFn):  # type: ignore[misc]
    """Write each bundle's elements into one temporary file of the sink; emit that file once the bundle ends."""

    def __init__(self, sink: FileBasedSink, temporary_folder: str) -> None:
        self._sink = sink
        self._folder = temporary_folder
        self._writer: Any = None

    def start_bundle(self) -> None:
        self._writer = None

    def process(self, element: Any) -> None:
        if self._writer is None:
            self._writer = self._sink.open_writer(self._folder, str(uuid.uuid4()))
        self._writer.write(element)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._writer is not None:
            written, self._writer = self._writer.close(), None
            yield WindowedValue(written, window.GlobalWindow().max_timestamp(), (window.GlobalWindow(),))


def _finalize(grouped: tuple[None, Iterable[str | None]], sink: FileBasedSink, temporary_folder: str) -> Iterator[str]:
    """Rename the written files to their shard names (one empty shard if none and the sink wants one).

    Safe to run again after an attempt that failed part way: the sink's ``pre_finalize`` (which deletes
    files already under the final names) runs only while every written file is still where it was
    written, and ``finalize_write`` skips the files an earlier attempt renamed. Every attempt outputs
    every final name.
    """
    written = [path for path in grouped[1] if path is not None]
    if not written and not sink.skip_if_empty:
        written = [sink.open_writer(temporary_folder, str(uuid.uuid4())).close()]
    first_attempt = all(FileSystems.exists(path) for path in written)
    cleared = sink.pre_finalize(temporary_folder, written) if first_attempt else None
    for _renamed in sink.finalize_write(temporary_folder, written, cleared):
        pass  # the files this attempt renamed; an attempt after a failure renames only the rest
    yield from (sink._get_final_name(shard, len(written)) for shard in range(len(written)))


class WriteFiles(beam.PTransform[PCollection[Any], PCollection[str]]):
    """Write a bounded PCollection through ``sink``; the output is the final file names, once all are written."""

    def __init__(self, sink: FileBasedSink) -> None:
        super().__init__()
        self.sink = sink

    def expand(self, elements: PCollection[Any]) -> PCollection[str]:
        """Make the temporary folder, write the bundles, then finalize once; the final file names."""
        folder = self.sink.initialize_write()
        written = (
            elements
            | "WindowInto" >> beam.WindowInto(window.GlobalWindows())
            | "WriteBundles" >> beam.ParDo(_WriteBundles(self.sink, folder))
        )
        # One element more, so that the finalize runs (and writes an empty shard) when nothing was written.
        once = elements.pipeline | "Once" >> beam.Create([None])
        names: PCollection[str] = (
            (written, once)
            | "AllFiles" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda path: (None, path))
            | "GroupFiles" >> beam.GroupByKey()
            | "Finalize" >> beam.FlatMap(_finalize, self.sink, folder).with_output_types(str)
        )
        return names
