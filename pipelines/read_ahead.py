"""Reading ahead: a DoFn's next input is read in a background thread while its last one's outputs go downstream.

Decoding a Parquet row group releases the GIL, while what the fused steps after it do with a
table (hashing texts, classifying rows) mostly holds it, so the two overlap on separate cores.
``ReadAhead`` runs one reading generator per input, in order, in one thread, and stays at
most ``depth`` outputs ahead of the consumer, so memory grows by that many outputs at most.

A DoFn using it hands each input over in ``process`` and yields the outputs of the inputs
before it (``outputs_before``), with their own window and timestamp (``held``); what is
left is yielded in ``finish_bundle``. The outputs of a bundle are the same elements, in
the same order, as without reading ahead; they only leave one input later.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

Item = TypeVar("Item")

_DONE = object()
_STOP = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


@dataclass(frozen=True)
class Held:
    """Where the outputs of one input go: its window and timestamp."""

    window: Any
    timestamp: Any

    def place(self, output: Any) -> Any:
        """``output`` (a value or a ``TaggedOutput``) placed in this input's window, at its timestamp."""
        if isinstance(output, beam.pvalue.TaggedOutput):
            return beam.pvalue.TaggedOutput(output.tag, self.place(output.value))
        return WindowedValue(output, self.timestamp, (self.window,))


class ReadAhead(Generic[Item]):
    """Run ``read(item)`` for each submitted item in one background thread, in order, ``depth`` outputs ahead."""

    def __init__(
        self, read: Callable[[Item], Iterator[Any]], *, depth: int = 1, name: str = "beam-m2v-read-ahead"
    ) -> None:
        self._read = read
        self._items: queue.Queue[Any] = queue.Queue()
        self._outputs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._submitted = 0
        self._finished = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue ``item``; the thread reads it once it has read the items before it."""
        self._items.put(item)
        self._submitted += 1

    def outputs_before(self, pending: int) -> Iterator[Any]:
        """Outputs of every submitted item but the last ``pending`` ones, waiting for them as needed."""
        while self._finished < self._submitted - pending:
            output = self._outputs.get()
            if output is _DONE:
                self._finished += 1
            elif isinstance(output, _Failure):
                self._finished += 1
                raise output.error
            else:
                yield output

    def close(self) -> None:
        """Stop the thread (what it has not read is dropped)."""
        self._stopping.set()
        self._items.put(_STOP)
        while self._thread.is_alive():
            try:  # unblock a thread waiting to hand over an output
                self._outputs.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _run(self) -> None:
        while (item := self._items.get()) is not _STOP:
            try:
                for output in self._read(item):
                    if self._stopping.is_set():
                        return
                    self._outputs.put(output)
            except BaseException as error:  # handed to the consumer, raised where it reads
                self._outputs.put(_Failure(error))
            else:
                self._outputs.put(_DONE)
