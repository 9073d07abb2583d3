"""Models on S3 (a local moto server): copied once per machine, checked, and used by separate SDK workers.

Everything here is real except the object store, which is moto's S3 server on loopback. Beam's
own S3 filesystem talks to it through the ``--s3_*`` pipeline options, exactly as it would talk
to AWS: the launcher gets them from the command line, the SDK workers from the pipeline options.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

import beam_m2v
from beam_m2v.errors import ModelLoadError
from beam_m2v.matrix_files import map_safetensors
from pipelines import embed
from tests.beam_helpers import beam_worker_pool, free_port, wait_for_port
from tests.conftest import MODEL_64, REPO

BUCKET = "beam-m2v-models"
KEY_ID = "testing-key"
SECRET = "testing-secret"
SAMPLE = REPO / "samples" / "linux-doc-sample.parquet"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class S3:
    """The moto server: its endpoint, the Beam options that reach it, and its request recorder."""

    endpoint: str
    recording: Path
    client: Any = None

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body)

    def put_folder(self, prefix: str, folder: Path, names: tuple[str, ...] = MODEL_FILES) -> None:
        for name in names:
            self.put(f"{prefix}/{name}", (folder / name).read_bytes())

    @property
    def options(self) -> list[str]:
        return [
            f"--s3_endpoint_url={self.endpoint}",
            f"--s3_access_key_id={KEY_ID}",
            f"--s3_secret_access_key={SECRET}",
            "--s3_region_name=us-east-1",
        ]

    def _call(self, action: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    @contextlib.contextmanager
    def record(self) -> Iterator[list[dict[str, Any]]]:
        """Record every request made inside the block; the list is filled when the block ends."""
        requests: list[dict[str, Any]] = []
        self._call("reset-recording")
        self._call("start-recording")
        try:
            yield requests
        finally:
            self._call("stop-recording")
            requests.extend(json.loads(line) for line in self.recording.read_text().splitlines() if line)


def object_gets(requests: list[dict[str, Any]], prefix: str) -> list[str]:
    """Keys of the objects under ``prefix`` whose bytes were read (GET on an object, not a listing)."""
    keys = []
    for request in requests:
        url = urlparse(request["url"])
        path = url.path.lstrip("/")
        if request["method"] == "GET" and not url.query and path.startswith(f"{BUCKET}/{prefix}/"):
            keys.append(path[len(BUCKET) + 1 :])
    return keys


def raw_variant(folder: Path) -> None:
    """The m2v-minilm-64 matrix as a headerless float32 ``vocab_matrix.bin`` beside its tokenizer."""
    folder.mkdir()
    matrix = np.asarray(map_safetensors(str(MODEL_64 / "model.safetensors"))["embeddings"], dtype="<f4")
    matrix.tofile(folder / "vocab_matrix.bin")
    shutil.copy(MODEL_64 / "tokenizer.json", folder / "tokenizer.json")


@pytest.fixture(scope="module")
def local_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw") / "m2v-minilm-64-raw"
    raw_variant(folder)
    return folder


@contextlib.contextmanager
def botocore_data_parsed_once() -> Iterator[None]:
    """Inside the block, every botocore session of this process shares one copy of botocore's parsed JSON data.

    Beam's S3 filesystem makes a new boto3 session for every call (about 30 per pipeline run), and
    each new session parses botocore's service descriptions again: 0.1-0.5 s a call, most of the
    time of a test against the loopback server. That data is static (the JSON files botocore
    ships), so parsing it once changes nothing else: every call still makes its own session and
    client and sends its requests to the server.
    """
    from botocore import loaders

    shared: dict[Any, Any] = {}
    original = loaders.Loader.__init__

    def share_cache(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._cache = shared

    loaders.Loader.__init__ = share_cache  # type: ignore[method-assign]
    try:
        yield
    finally:
        loaders.Loader.__init__ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def moto_server(scratch: Path, bucket: str) -> Iterator[S3]:
    """moto's S3 server on a free loopback port with an empty ``bucket``, recording requests on demand.

    While it runs, botocore's data is parsed once for the whole process (``botocore_data_parsed_once``).
    """
    import boto3

    port = free_port()
    server = S3(f"http://127.0.0.1:{port}", scratch / "recording.jsonl")
    server.recording.touch()
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_RECORDER_FILEPATH": str(server.recording)},
    )
    try:
        wait_for_port(port, process, "moto_server")
        server.client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        server.client.create_bucket(Bucket=bucket)
        with botocore_data_parsed_once():
            yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, local_raw: Path, model_256_path: Path) -> Iterator[S3]:
    """moto's S3 server with the test models uploaded under several prefixes."""
    with moto_server(tmp_path_factory.mktemp("moto"), BUCKET) as server:
        server.put_folder("m64", MODEL_64)
        server.put_folder("m256", model_256_path)
        server.put_folder("raw", local_raw, ("vocab_matrix.bin", "tokenizer.json"))
        # A corrupted object: the matrix cut in half (its header still promises the whole tensor).
        server.put_folder("truncated", MODEL_64, ("config.json", "tokenizer.json"))
        matrix = (MODEL_64 / "model.safetensors").read_bytes()
        server.put("truncated/model.safetensors", matrix[: len(matrix) // 2])
        # Missing objects: a prefix with no model at all, and a model folder without its tokenizer.
        server.put("nothing/README.md", b"no model here\n")
        server.put_folder("no-tokenizer", MODEL_64, ("config.json", "model.safetensors"))
        # Checksum files: one right, one with a wrong line for the matrix.
        sums = "".join(f"{sha256_of(MODEL_64 / name)}  {name}\n" for name in MODEL_FILES)
        server.put_folder("good-sums", MODEL_64)
        server.put("good-sums/SHA256SUMS", sums.encode())
        server.put_folder("bad-sums", MODEL_64)
        wrong = sums.replace(sha256_of(MODEL_64 / "model.safetensors"), "ab" * 32)
        server.put("bad-sums/SHA256SUMS", wrong.encode())
        # `sha256sum * > SHA256SUMS` in the folder model2vec saved: it also lists README.md and modules.json.
        every_file = tuple(sorted(path.name for path in MODEL_64.iterdir()))
        server.put_folder("all-sums", MODEL_64, every_file)
        all_sums = "".join(f"{sha256_of(MODEL_64 / name)}  {name}\n" for name in every_file)
        server.put("all-sums/SHA256SUMS", all_sums.encode())
        yield server


@pytest.fixture
def s3_filesystem(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """This process reads s3:// through the moto server, with an empty model cache."""
    monkeypatch.setenv("BEAM_M2V_CACHE", str(tmp_path / "cache"))
    previous = FileSystems._pipeline_options
    FileSystems.set_options(PipelineOptions(s3.options))
    yield s3
    FileSystems.set_options(previous)


def url(prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}"


def cache_entries(cache: Path) -> list[str]:
    return sorted(os.listdir(cache)) if cache.exists() else []


# -- loading -------------------------------------------------------------------------------------


def test_s3_model_gives_the_local_models_vectors_and_is_downloaded_once(s3_filesystem, corpus_texts, tmp_path):
    texts = corpus_texts[:500]
    expected = beam_m2v.load_model(MODEL_64).encode(texts)
    with s3_filesystem.record() as requests:
        first = beam_m2v.load_model(url("m64"))
        second = beam_m2v.load_model(url("m64"))
    assert np.array_equal(first.encode(texts), expected)
    assert np.array_equal(second.encode(texts), expected)
    assert first.fingerprint == beam_m2v.load_model(MODEL_64).fingerprint
    assert first.source == url("m64")
    assert first.files.remote is not None and first.files.remote[0] == url("m64")
    # Two loads, one download: each object was read once, then the cache served it.
    assert sorted(object_gets(requests, "m64")) == sorted(f"m64/{name}" for name in MODEL_FILES)
    key = os.path.basename(first.files.remote[1])
    assert cache_entries(tmp_path / "cache") == [key, f"{key}.lock"]
    assert (tmp_path / "cache" / key / ".complete").exists()


def test_s3_raw_vocab_matrix_url(s3_filesystem, local_raw, corpus_texts):
    texts = corpus_texts[:300]
    remote = beam_m2v.load_model(url("raw/vocab_matrix.bin"), raw_dim=64)
    assert remote.files.layout.value == "raw"
    assert np.array_equal(remote.encode(texts), beam_m2v.load_model(local_raw, raw_dim=64).encode(texts))


def test_checksums_that_match_are_accepted(s3_filesystem):
    """Both checks at once: ``sha256=`` for the matrix and a SHA256SUMS file listing every file."""
    model = beam_m2v.load_model(url("good-sums"), sha256=sha256_of(MODEL_64 / "model.safetensors"))
    assert model.fingerprint == beam_m2v.load_model(MODEL_64).fingerprint
    assert os.path.isfile(os.path.join(model.files.remote[1], "SHA256SUMS"))


def test_checksum_file_of_the_whole_folder_is_accepted(s3_filesystem):
    assert beam_m2v.load_model(url("all-sums")).fingerprint == beam_m2v.load_model(MODEL_64).fingerprint


# -- failures ------------------------------------------------------------------------------------

FAILURES = {
    "corrupted-object": (["--model", url("truncated")], f"{url('truncated')}/model.safetensors: truncated"),
    "no-model-at-prefix": (["--model", url("nothing")], f"{url('nothing')}: no model found"),
    "wrong-model-sha256": (
        ["--model", url("m64"), "--model-sha256", "0" * 64],
        f"{url('m64')}/model.safetensors: SHA-256 mismatch",
    ),
    "wrong-SHA256SUMS-line": (["--model", url("bad-sums")], f"{url('bad-sums')}/model.safetensors: SHA-256 mismatch"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_bad_remote_model_stops_the_job_naming_the_object(s3_filesystem, case, tmp_path, capsys):
    args, message = FAILURES[case]
    code = embed.main(
        [
            "--input",
            str(SAMPLE),
            "--output",
            str(tmp_path / "out"),
            *args,
            "--runner=FnApiRunner",
            *s3_filesystem.options,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    if "SHA-256" in message:  # a download that fails verification never enters the cache
        assert [entry for entry in cache_entries(tmp_path / "cache") if not entry.endswith(".lock")] == []


def test_repaired_object_is_downloaded_again(s3_filesystem, corpus_texts):
    """The cache keeps a faithful copy of a damaged object, but re-uploading the object makes a new entry."""
    matrix = (MODEL_64 / "model.safetensors").read_bytes()
    s3_filesystem.put_folder("repaired", MODEL_64, ("config.json", "tokenizer.json"))
    s3_filesystem.put("repaired/model.safetensors", matrix[:-1000])
    with pytest.raises(ModelLoadError, match=f"^{url('repaired')}/model.safetensors: truncated"):
        beam_m2v.load_model(url("repaired"))
    s3_filesystem.put("repaired/model.safetensors", matrix)
    texts = corpus_texts[:200]
    assert np.array_equal(
        beam_m2v.load_model(url("repaired")).encode(texts), beam_m2v.load_model(MODEL_64).encode(texts)
    )


def test_remote_folder_missing_its_tokenizer_is_named_by_url(s3_filesystem):
    with pytest.raises(ModelLoadError) as caught:
        beam_m2v.load_model(url("no-tokenizer"))
    assert "missing" in str(caught.value)
    assert str(caught.value).startswith(f"{url('no-tokenizer')}/tokenizer.json:"), str(caught.value)


# -- SDK workers in separate processes: PortableRunner + EXTERNAL worker pool ----------------------


@pytest.fixture(scope="module")
def worker_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-cache")


BOOT = """
import argparse, os, sys
import grpc
from google.protobuf import json_format, text_format
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2

parser = argparse.ArgumentParser()
for name in ("id", "logging_endpoint", "artifact_endpoint", "provision_endpoint", "control_endpoint"):
    parser.add_argument("--" + name)
args, _ = parser.parse_known_args()
with grpc.insecure_channel(args.provision_endpoint) as channel:
    info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
        beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", args.id)]
    ).info


def descriptor(url):
    return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))


env = dict(
    os.environ,
    WORKER_ID=args.id,
    PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
    RUNNER_CAPABILITIES=" ".join(info.runner_capabilities),
    CONTROL_API_SERVICE_DESCRIPTOR=descriptor(info.control_endpoint.url or args.control_endpoint),
    LOGGING_API_SERVICE_DESCRIPTOR=descriptor(info.logging_endpoint.url or args.logging_endpoint),
)
os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)
"""


@pytest.fixture(scope="module")
def worker_pool(worker_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Beam worker pool on loopback whose SDK workers (separate processes) cache models in ``worker_cache``.

    Started the way the SDK container's ``--worker_pool`` mode starts it: with a container
    executable that, like the container's ``boot``, fetches the provision info (the pipeline
    options) and runs ``sdk_worker_main``, which hands the options to Beam's FileSystems. A bare
    ``worker_pool_main`` skips that step, so its workers would see no ``--s3_*`` options at all.
    """
    folder = tmp_path_factory.mktemp("boot")
    (folder / "boot.py").write_text(BOOT)
    boot = folder / "boot"
    # A shell script: a #! line cannot name an interpreter whose path holds a space.
    boot.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(folder / "boot.py"))} "$@"\n')
    boot.chmod(0o755)
    with beam_worker_pool(
        env={**os.environ, "BEAM_M2V_CACHE": str(worker_cache)}, container_executable=str(boot)
    ) as address:
        yield address


def portable_options(worker_pool: str) -> list[str]:
    return [
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=EXTERNAL",
        f"--environment_config={worker_pool}",
        "--sdk_worker_parallelism=1",
    ]


def vectors_by_id(out: Path) -> dict[int, np.ndarray]:
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    ids = table.column("id").to_pylist()
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(len(ids), -1)
    return dict(zip(ids, vectors, strict=True))


def test_embed_on_external_workers_reads_the_s3_model(s3, worker_pool, worker_cache, tmp_path, monkeypatch):
    """About 10 s on a quiet machine: a PortableRunner job whose SDK worker is a separate process that
    imports Beam and fetches the model from S3 itself (the point of the test), then 2,000 rows."""
    monkeypatch.setenv("BEAM_M2V_CACHE", str(tmp_path / "launcher-cache"))
    previous = FileSystems._pipeline_options
    try:
        remote = embed.run(
            [
                "--input",
                str(SAMPLE),
                "--output",
                str(tmp_path / "remote"),
                "--model",
                url("m64"),
                "--model-sha256",
                sha256_of(MODEL_64 / "model.safetensors"),
                *portable_options(worker_pool),
                *s3.options,
            ]
        )
    finally:
        FileSystems.set_options(previous)
    assert remote["rows"] == {"read": 2000, "embedded": 2000, "failed": 0}
    assert remote["model_source"] == url("m64")
    reference = beam_m2v.load_model(MODEL_64)
    assert remote["model_fingerprint"] == reference.fingerprint
    sample = pq.read_table(SAMPLE)
    ids, texts = sample.column("id").to_pylist(), sample.column("text").to_pylist()
    got, want = vectors_by_id(tmp_path / "remote"), dict(zip(ids, reference.encode(texts), strict=True))
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(got[key], want[key]) for key in want)
    # The SDK workers fetched the model themselves, into their own machine cache.
    entries = [entry for entry in cache_entries(worker_cache) if not entry.endswith(".lock")]
    assert entries, "the SDK workers did not cache the model"
    assert all((worker_cache / entry / ".complete").exists() for entry in entries)


# A PortableRunner job on the external worker pool, which imports Beam and reads S3 itself: ~8-11 s here.
def test_corrupted_object_fails_the_job_on_the_workers(s3, worker_pool):
    """EmbedText resolves its model on the workers: a damaged object fails the job there, naming the object."""
    pipeline = beam.Pipeline(options=PipelineOptions([*portable_options(worker_pool), *s3.options]))
    _ = pipeline | beam.Create(["a text"]) | beam_m2v.EmbedText(url("truncated"))
    with pytest.raises(Exception, match=f"{url('truncated')}/model.safetensors: truncated"):
        result = pipeline.run()
        assert result.wait_until_finish(duration=300_000) != PipelineState.DONE


def test_embed_reads_and_writes_s3(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the bug writes its './s3:/...' folder
    s3.put("corpus/sample.parquet", SAMPLE.read_bytes())
    previous = FileSystems._pipeline_options
    try:
        manifest = embed.run(
            [
                "--input",
                url("corpus/*.parquet"),
                "--output",
                url("vectors/run-1"),
                "--model",
                str(MODEL_64),
                "--runner=FnApiRunner",
                *s3.options,
            ]
        )
    finally:
        FileSystems.set_options(previous)
    assert manifest["rows"]["embedded"] == 2000
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix="vectors/run-1/").get("Contents", [])
    names = {entry["Key"].removeprefix("vectors/run-1/") for entry in listed}
    assert "_manifest.json" in names and any(name.startswith("part-") for name in names), names


# -- several processes on one machine ------------------------------------------------------------

CHILD = r"""
import json, os, sys, time
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
import beam_m2v

source, texts, out, ready, go = sys.argv[1:6]
FileSystems.set_options(PipelineOptions(sys.argv[6:]))
open(ready, "w").close()
while go and not os.path.exists(go):
    time.sleep(0.002)
model = beam_m2v.load_model(source)
np.save(out, model.encode(json.load(open(texts))))
print(json.dumps({"folder": model.files.remote[1], "inode": os.stat(model.files.matrix).st_ino}))
"""


def child_env(cache: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "BEAM_M2V_CACHE": str(cache), "PYTHONPATH": path}


def start_child(s3: S3, cache: Path, texts: Path, name: str, go: Path | None, source: str) -> subprocess.Popen[str]:
    folder = texts.parent
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            source,
            str(texts),
            str(folder / f"{name}.npy"),
            str(folder / f"{name}.ready"),
            str(go) if go else "",
            *s3.options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(cache),
    )


@contextlib.contextmanager
def reaped(children: list[subprocess.Popen[str]]) -> Iterator[None]:
    """Whatever happens in the block, no child outlives it."""
    try:
        yield
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()


# Two fresh processes import Beam, download the 256-dim model (one of them) and encode: ~7-10 s here.
def test_two_processes_at_once_download_once(s3, corpus_texts, model_256_path, tmp_path):
    """Two processes released together against one empty cache: equal vectors, one download.

    The observable is moto's request log: the bytes of each object are read by exactly one GET
    per object in all, so the process that lost the race for the lock downloaded nothing.
    Both processes also map the very same matrix file (same inode), and no ``.partial-*``
    folder is left behind.
    """
    cache = tmp_path / "cache"
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(corpus_texts[:300]))
    go = tmp_path / "go"
    children = [start_child(s3, cache, texts, name, go, url("m256")) for name in ("a", "b")]
    with reaped(children):
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{name}.ready").exists() for name in ("a", "b")):
            for child in children:
                if child.poll() is not None:
                    pytest.fail(f"child exited early: {child.communicate()[1][-3000:]}")
            assert time.monotonic() < deadline, "children did not get ready"
            time.sleep(0.02)
        with s3.record() as requests:
            go.touch()
            outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    expected = beam_m2v.load_model(model_256_path).encode(corpus_texts[:300])
    for name in ("a", "b"):
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), expected)
    assert sorted(object_gets(requests, "m256")) == sorted(f"m256/{name}" for name in MODEL_FILES)
    assert reports[0] == reports[1]
    key = os.path.basename(reports[0]["folder"])
    assert cache_entries(cache) == [key, f"{key}.lock"]


def size(path: Path) -> int:
    """Size of a file that may vanish at any moment (0 when it did)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_interrupted_download_is_never_used(s3, s3_filesystem, corpus_texts, model_256_path, tmp_path):
    """A process killed mid-download leaves a ``.partial-*`` folder; the next load ignores it and re-downloads."""
    texts = corpus_texts[:300]
    expected = beam_m2v.load_model(model_256_path).encode(texts)
    cache = tmp_path / "cache"
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    for _attempt in range(3):
        shutil.rmtree(cache, ignore_errors=True)
        child = start_child(s3, cache, tmp_path / "texts.json", "killed", None, url("m256"))
        partial_matrix = None
        deadline = time.monotonic() + 120
        while partial_matrix is None and child.poll() is None and time.monotonic() < deadline:
            partial_matrix = next((path for path in cache.glob(".partial-*/model.safetensors") if size(path)), None)
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
        partials = list(cache.glob(".partial-*"))
        if partials and not any(cache.glob("*/.complete")):
            break
    else:
        pytest.fail("could not interrupt a download in 3 attempts (the download finished first each time)")
    assert not (partials[0] / ".complete").exists()

    with s3.record() as requests:
        model = beam_m2v.load_model(url("m256"))
    assert np.array_equal(model.encode(texts), expected)
    assert sorted(object_gets(requests, "m256")) == sorted(f"m256/{name}" for name in MODEL_FILES)
    assert Path(model.files.matrix).read_bytes() == (model_256_path / "model.safetensors").read_bytes()
    assert not str(model.files.matrix).startswith(str(partials[0]))


def test_cache_folder_without_complete_marker_is_never_used(s3_filesystem, corpus_texts, tmp_path):
    """An entry without ``.complete`` (and stray ``.partial-*`` folders) holding bad bytes is replaced, not used."""
    texts = corpus_texts[:300]
    cache = tmp_path / "cache"
    key = os.path.basename(beam_m2v.load_model(url("m64")).files.remote[1])
    shutil.rmtree(cache)
    # Same key, damaged matrix, no marker: what a crash in the middle of an in-place copy would leave.
    (cache / key).mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(MODEL_64 / name, cache / key / name)
    matrix = bytearray((cache / key / "model.safetensors").read_bytes())
    matrix[-4096:] = bytes(4096)
    (cache / key / "model.safetensors").write_bytes(bytes(matrix))
    (cache / ".partial-stale").mkdir()
    (cache / ".partial-stale" / "model.safetensors").write_bytes(b"garbage")

    with s3_filesystem.record() as requests:
        model = beam_m2v.load_model(url("m64"))
    assert os.path.basename(model.files.remote[1]) == key
    assert (cache / key / ".complete").exists()
    assert np.array_equal(model.encode(texts), beam_m2v.load_model(MODEL_64).encode(texts))
    assert (cache / key / "model.safetensors").read_bytes() == (MODEL_64 / "model.safetensors").read_bytes()
    assert sorted(object_gets(requests, "m64")) == sorted(f"m64/{name}" for name in MODEL_FILES)
