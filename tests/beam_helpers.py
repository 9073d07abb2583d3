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
from apache_beam.testing.util import BeamAssertException

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


def vectors_match(expected: dict[str, np.ndarray]) -> Any:
    """A matcher for (text, vector) pairs: every text present once with exactly its expected vector.

    The matcher is pickled into the pipeline (and compressed by Beam), so it carries digests
    of the expected vectors rather than the vectors themselves.
    """
    digests = {text: vector_digest(vector) for text, vector in expected.items()}

    def check(actual: list[tuple[str, Any]]) -> None:
        if sorted(text for text, _ in actual) != sorted(digests):
            raise BeamAssertException(f"texts differ: {len(actual)} out, {len(digests)} expected")
        for text, vector in actual:
            if vector_digest(vector) != digests[text]:
                raise BeamAssertException(f"vector differs for {text[:60]!r}")

    return check


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
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment, cwd=cwd)
    try:
        wait_for_port(port, process, "worker pool")
        yield f"localhost:{port}"
    finally:
        process.send_signal(signal.SIGINT)  # the pool stops the SDK workers it started on the way out
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
