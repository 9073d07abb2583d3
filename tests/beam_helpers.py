"""Helpers for running real Beam pipelines in tests and reading their metrics."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import BeamAssertException, assert_that

from beam_m2v.transforms.metrics import NAMESPACE


def fn_api_pipeline(*args: str) -> beam.Pipeline:
    """A pipeline on FnApiRunner with the given extra options."""
    return beam.Pipeline(runner="FnApiRunner", options=PipelineOptions(list(args)))


def counter(result: Any, name: str) -> int:
    """Sum of a beam_m2v counter over all steps (0 when never incremented)."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    return sum(item.committed or 0 for item in query["counters"])


def private_model_copy(model_dir: Path, tmp_path: Path) -> str:
    """A copy of a model folder at a fresh path, so no process has it cached yet."""
    target = tmp_path / f"model-{model_dir.name}"
    shutil.copytree(model_dir, target)
    return str(target)


def vector_digest(vector: Any) -> bytes:
    """A short digest of a float32 vector's exact bytes: equal digests mean bit-identical vectors."""
    return hashlib.blake2b(np.ascontiguousarray(vector, dtype=np.float32).tobytes(), digest_size=16).digest()


def text_digest(text: str) -> bytes:
    """A short digest of a text, so huge texts need not travel through the assertion's shuffle."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def vector_digests(expected: dict[str, np.ndarray]) -> list[tuple[bytes, bytes]]:
    """The (text digest, vector digest) pairs of expected vectors, sorted."""
    return sorted((text_digest(text), vector_digest(vector)) for text, vector in expected.items())


def assert_vectors(embedded: beam.PCollection, expected: dict[str, np.ndarray], label: str = "Vectors") -> None:
    """Assert that ``embedded`` (text, vector) pairs hold every expected text once, each with exactly its vector.

    Only digests travel through the assertion's shuffle and are pickled into the pipeline, so a
    10 MB text or thousands of vectors cost no more than a short string.
    """
    wanted = vector_digests(expected)

    def check(actual: list[tuple[bytes, bytes]]) -> None:
        got = sorted(actual)
        if got != wanted:
            texts = {text for text, _ in wanted}
            missing = len(texts - {text for text, _ in got})
            raise BeamAssertException(
                f"{len(got)} (text, vector) pairs out for {len(wanted)} expected: "
                f"{missing} texts missing, {len(set(got) - set(wanted))} pairs unexpected"
            )

    digests = embedded | f"{label}Digests" >> beam.Map(lambda pair: (text_digest(pair[0]), vector_digest(pair[1])))
    assert_that(digests, check, label=label)


class WriteDigests(beam.DoFn):  # type: ignore[misc]
    """Writes each bundle's (text digest, vector digest) pairs to a file of its own in ``folder``.

    For runs whose assertion must not shuffle: FnApiRunner with several workers in
    multi_threading mode can garble the Flatten inside ``assert_that`` (apache/beam#21104).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def start_bundle(self) -> None:
        self.pairs: list[tuple[bytes, bytes]] = []

    def process(self, pair: tuple[str, Any]) -> None:
        self.pairs.append((text_digest(pair[0]), vector_digest(pair[1])))

    def finish_bundle(self) -> None:
        import pickle
        import uuid

        with open(os.path.join(self.folder, uuid.uuid4().hex), "wb") as out:
            pickle.dump(self.pairs, out)


def read_digests(folder: Path) -> list[tuple[bytes, bytes]]:
    """All pairs written by ``WriteDigests`` into ``folder``, sorted."""
    import pickle

    pairs: list[tuple[bytes, bytes]] = []
    for path in folder.iterdir():
        with open(path, "rb") as file:
            pairs.extend(pickle.load(file))
    return sorted(pairs)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], what: str, timeout: float = 120) -> None:
    """Wait until ``process`` listens on ``port`` on loopback; fail the test if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


@contextlib.contextmanager
def beam_worker_pool(
    *,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    container_executable: str | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
) -> Iterator[str]:
    """A Beam Python worker pool on loopback for ``--environment_type=EXTERNAL``; yields its address.

    Each SDK worker it starts is a separate process. Without ``container_executable`` the pool
    starts workers as ``python -c ...`` from PATH, so ``python``'s folder goes first on PATH.
    """
    port = free_port()
    command = [python, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]
    if container_executable:
        command.append(f"--container_executable={container_executable}")
    environment = dict(os.environ if env is None else env)
    environment["PATH"] = os.path.dirname(python) + os.pathsep + environment.get("PATH", "")
    with open(log if log is not None else os.devnull, "wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=environment, cwd=cwd, start_new_session=True
        )
    try:
        wait_for_port(port, process, "worker pool")
        yield f"localhost:{port}"
    finally:
        process.send_signal(signal.SIGINT)  # the pool stops the SDK workers it started on the way out
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            # An SDK worker still running when its pool stops gets SIGTERM and 10 s before SIGKILL:
            # the pool and its workers (its own process group) are stopped at once instead.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
