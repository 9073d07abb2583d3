"""Shared test fixtures, built only from what the repository holds.

* ``MODEL_64``: the bundled 64-dim float16 model (``models/m2v-minilm-64``).
* ``model_256_path``: a 256-dim float32 model derived from it in a session folder (its rows
  times a fixed random 64 x 256 matrix), with the same tokenizer and config: a real model2vec
  folder of the shape of potion-base-8M.
* ``corpus_table()``: 5,000 real-looking paragraphs: the 2,000 bundled sample paragraphs
  (``samples/``) and 3,000 more, all distinct, made from their sentences; ids 0-4,999.
"""

from __future__ import annotations

import compileall
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


MODEL_64 = REPO / "models" / "m2v-minilm-64"
SAMPLE_PARQUET = REPO / "samples" / "linux-doc-sample.parquet"
SAMPLE_JSONL = REPO / "samples" / "linux-doc-sample.jsonl"
CORPUS_ROWS = 5000


def pytest_configure(config: pytest.Config) -> None:
    """Keep the bytecode of what the tests import; give each xdist worker its share of the cores.

    The tests start many Python processes (``python -m pipelines.embed`` and others), and
    each imports Beam. Where ``PYTHONDONTWRITEBYTECODE`` is set, nothing compiled is kept, and
    every one of them compiles Beam's modules again (about 2 s of CPU each). So the test run
    writes bytecode whatever that setting says: the controller drops it before the workers start,
    every process the tests start inherits that, and each module is compiled once, the first time
    it is imported. It is what an install with ``--compile-bytecode`` does, for the modules used
    only. The controller compiles this repository's packages itself, before the workers start.

    The xdist workers share the machine's cores as Beam's SDK worker processes do, and get the
    same budget: ``BEAM_M2V_THREADS`` = cores / workers, inherited by the processes their tests
    start (unless the environment sets it already). Without it every worker, and every process
    it starts, sizes its tokenizer and encode pools for the whole machine, and on 2 cores the suite
    runs about 6% slower. Tests of the budget itself remove the setting where they need the default.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        sys.dont_write_bytecode = False
        for folder in ("beam_m2v", "pipelines"):
            compileall.compile_dir(REPO / folder, quiet=1)
        return
    from beam_m2v.thread_budget import ENV_THREADS, available_cores

    os.environ.setdefault(ENV_THREADS, str(max(1, available_cores() // int(workerinput["workercount"]))))


@functools.cache
def corpus_table() -> object:
    """``pyarrow.Table`` (id int64, text string) of ``CORPUS_ROWS`` paragraphs, the sample's first."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sample = pq.read_table(SAMPLE_PARQUET)
    texts: list[str] = sample.column("text").to_pylist()
    sentences = [part for text in texts for part in re.split(r"(?<=[.:;?!])\s+", text) if part]
    rng = np.random.default_rng(20261203)
    all_texts = list(texts)
    seen = set(texts)
    while len(all_texts) < CORPUS_ROWS:
        count = int(rng.integers(1, 5))
        text = " ".join(sentences[int(i)] for i in rng.integers(0, len(sentences), count))
        if text not in seen:
            seen.add(text)
            all_texts.append(text)
    return pa.table({"id": pa.array(range(len(all_texts)), pa.int64()), "text": pa.array(all_texts, pa.string())})


def corpus_jsonl_lines(count: int) -> list[bytes]:
    """The first ``count`` rows of ``corpus_table()`` as JSONL lines (``{"id": ..., "text": ...}`` and a newline)."""
    table = corpus_table()
    ids = table.column("id").to_pylist()[:count]  # type: ignore[attr-defined]
    texts = table.column("text").to_pylist()[:count]  # type: ignore[attr-defined]
    return [
        (json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n").encode("utf-8")
        for i, t in zip(ids, texts, strict=True)
    ]


def derive_model_256(folder: Path) -> Path:
    """Write a 256-dim float32 model2vec folder derived from the bundled 64-dim model."""
    import numpy as np
    from safetensors.numpy import save_file

    from beam_m2v.matrix_files import map_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    rows = np.asarray(map_safetensors(str(MODEL_64 / "model.safetensors"))["embeddings"], dtype=np.float32)
    # Scaled so that the derived rows have the magnitude of the original ones.
    projection = (np.random.default_rng(256).standard_normal((rows.shape[1], 256)) / np.sqrt(rows.shape[1])).astype(
        np.float32
    )
    save_file({"embeddings": np.ascontiguousarray(rows @ projection)}, str(folder / "model.safetensors"))
    for name in ("tokenizer.json", "modules.json"):
        shutil.copy(MODEL_64 / name, folder / name)
    config = json.loads((MODEL_64 / "config.json").read_text())
    config.update(hidden_dim=256, embedding_dtype="float32")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="session")
def model_256_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return derive_model_256(tmp_path_factory.mktemp("models") / "m2v-minilm-256")


@pytest.fixture(scope="session")
def model_64_path() -> Path:
    return MODEL_64


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    """The texts of ``corpus_table()``: 5,000 paragraphs."""
    return corpus_table().column("text").to_pylist()  # type: ignore[attr-defined, no-any-return]


def links_into(folder: Path) -> list[str]:
    """The links to a folder under ``folder`` that runs left in the temporary folder (glob-free aliases)."""
    found = []
    for name in os.listdir(tempfile.gettempdir()):
        link = Path(tempfile.gettempdir(), name, "staging")
        if name.startswith("beam-m2v-staging-") and link.is_symlink():
            if os.readlink(link).startswith(str(folder)):
                found.append(str(link))
    return found
