"""The thread budget: which setting decides, that it sizes the real pools, and that vectors stay exact.

Budgets are fixed once per process, so everything that fixes one runs in a fresh subprocess
or in real Beam worker processes; this pytest process only resolves budgets as pure values.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from tiny_models import build_model2vec_model

import beam_m2v
from beam_m2v.thread_budget import (
    ENV_THREADS,
    ENV_WORKER_PROCESSES,
    OPTION,
    ThreadBudget,
    ThreadBudgetError,
    available_cores,
    check_settings,
    is_sdk_worker_process,
    launcher_environment,
    process_options,
    resolve_budget,
)
from beam_m2v.transforms.model_cache import ModelSpec, acquire_model
from beam_m2v.transforms.thread_options import pipeline_thread_budget
from pipelines import embed
from tests.beam_helpers import beam_worker_pool, private_model_copy
from tests.conftest import REPO, corpus_table

# The command lines Beam starts SDK workers with (recorded from Beam 2.77's runners and pool).
WORKER_MAIN_ARGV = ["/usr/bin/python", "-m", "apache_beam.runners.worker.sdk_worker_main"]
POOL_WORKER_ARGV = [
    "python",
    "-c",
    'from apache_beam.runners.worker.sdk_worker import SdkHarness; SdkHarness("localhost:1",worker_id="w").run()',
]
LAUNCHER_ARGV = ["/usr/bin/python", "-m", "pipelines.embed", "--input", "x.parquet", "--output", "out"]


def budget(options: dict[str, Any] | None = None, env: dict[str, str] | None = None, **kw: Any) -> ThreadBudget:
    return resolve_budget(options or {}, env or {}, cores=kw.get("cores", 8), sdk_worker=kw.get("sdk_worker", True))


# -- which setting decides ---------------------------------------------------------------------


def test_single_process_keeps_every_core():
    resolved = budget(sdk_worker=False)
    assert resolved.threads is None
    assert resolved.encode_threads == max(2, os.cpu_count() or 2)  # the pool size without a budget


def test_explicit_option_beats_environment_and_runner():
    options = {OPTION: "3", "runner": "DataflowRunner", "sdk_worker_parallelism": "4"}
    assert budget(options, {ENV_THREADS: "5"}).threads == 3
    assert budget(options, {ENV_THREADS: "5"}, sdk_worker=False).threads == 3  # a launcher running in-process
    assert budget({OPTION: "all"}, {ENV_THREADS: "1"}).threads is None


def test_environment_beats_what_the_runner_says():
    assert budget({"runner": "DataflowRunner"}, {ENV_THREADS: "2"}).threads == 2
    assert budget({}, {ENV_THREADS: " all "}).threads is None
    assert budget({}, {ENV_THREADS: "2"}, sdk_worker=False).threads == 2


@pytest.mark.parametrize(
    ("options", "env", "threads", "reason"),
    [
        ({}, {ENV_WORKER_PROCESSES: "2"}, 4, "BEAM_M2V_WORKER_PROCESSES=2"),
        ({}, {ENV_WORKER_PROCESSES: "16"}, 1, "BEAM_M2V_WORKER_PROCESSES=16"),
        ({}, {ENV_WORKER_PROCESSES: "1"}, None, "BEAM_M2V_WORKER_PROCESSES=1"),
        ({"runner": "DataflowRunner", "sdk_worker_parallelism": "1"}, {}, 1, "Dataflow"),
        ({"experiments": ["use_multiple_sdk_containers", "beam_fn_api"]}, {}, 1, "Dataflow"),
        ({"runner": "DataflowRunner", "experiments": ["no_use_multiple_sdk_containers"]}, {}, None, "one SDK process"),
        ({"experiments": "a,no_use_multiple_sdk_containers"}, {}, None, "one SDK process"),
        ({"runner": "FlinkRunner", "sdk_worker_parallelism": "4"}, {}, 2, "sdk_worker_parallelism=4"),
        ({"runner": "FlinkRunner", "sdk_worker_parallelism": 1}, {}, None, "sdk_worker_parallelism=1"),
        ({"runner": "FlinkRunner", "sdk_worker_parallelism": "0"}, {}, 1, "does not say"),
        ({}, {}, 1, "does not say"),
    ],
)
def test_sdk_worker_takes_its_share_of_the_machine(options, env, threads, reason):
    resolved = budget(options, env, cores=8)
    assert resolved.threads == threads
    assert reason in resolved.reason


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", ""])
def test_bad_settings_are_refused(bad):
    if bad:
        with pytest.raises(ThreadBudgetError, match=ENV_THREADS):
            budget({}, {ENV_THREADS: bad})
        with pytest.raises(ThreadBudgetError, match=OPTION):
            budget({OPTION: bad}, {})
    with pytest.raises(ThreadBudgetError, match=ENV_WORKER_PROCESSES):
        budget({}, {ENV_WORKER_PROCESSES: bad or "none"})


def test_sdk_worker_processes_are_recognised_by_their_command_line():
    assert is_sdk_worker_process(WORKER_MAIN_ARGV)
    assert is_sdk_worker_process(POOL_WORKER_ARGV)
    assert not is_sdk_worker_process(LAUNCHER_ARGV)
    assert not is_sdk_worker_process(None)  # this pytest process


def test_launcher_environment_for_inheriting_workers():
    assert launcher_environment(None, None) == {}
    assert launcher_environment(None, 2) == {ENV_WORKER_PROCESSES: "2"}
    assert launcher_environment(None, 0) == {ENV_WORKER_PROCESSES: str(available_cores())}  # Beam: 0 = one per core
    assert launcher_environment("3", 2) == {ENV_THREADS: "3"}


def test_pipeline_thread_budget_exports_for_multi_processing_and_restores(monkeypatch):
    monkeypatch.delenv(ENV_WORKER_PROCESSES, raising=False)
    monkeypatch.setenv(ENV_THREADS, "7")
    options = PipelineOptions(["--direct_num_workers=4", "--direct_running_mode=multi_processing"])
    with pipeline_thread_budget(options):
        assert os.environ[ENV_WORKER_PROCESSES] == "4"
        assert OPTION not in process_options()
    assert ENV_WORKER_PROCESSES not in os.environ
    assert os.environ[ENV_THREADS] == "7"

    explicit = PipelineOptions(["--direct_num_workers=4", "--direct_running_mode=multi_processing", f"--{OPTION}=2"])
    with pipeline_thread_budget(explicit):
        assert os.environ[ENV_THREADS] == "2"
        assert process_options()[OPTION] == "2"
    assert os.environ[ENV_THREADS] == "7"
    assert OPTION not in process_options()

    with pipeline_thread_budget(PipelineOptions([])):  # in memory: nothing to export
        assert ENV_WORKER_PROCESSES not in os.environ


def test_bad_setting_fails_when_the_model_is_acquired(monkeypatch, model_64_path):
    monkeypatch.setenv(ENV_THREADS, "zero")
    with pytest.raises(ThreadBudgetError, match="BEAM_M2V_THREADS='zero'"):
        check_settings()
    with pytest.raises(ThreadBudgetError):
        acquire_model(ModelSpec.of(model_64_path))  # in a DoFn's setup: the job fails, no row is dead-lettered


def test_embed_refuses_bad_settings_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(ENV_THREADS, "0")
    args = ["--input", str(REPO / "samples" / "linux-doc-sample.parquet"), "--output", str(tmp_path / "out")]
    assert embed.main([*args, "--model", str(REPO / "models" / "m2v-minilm-64")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["beam-m2v embed: error: BEAM_M2V_THREADS='0' is not a positive number of threads or 'all'"]
    monkeypatch.delenv(ENV_THREADS)
    with pytest.raises(SystemExit) as stopped:
        embed.main([*args, "--m2v_threads_per_worker=none"])
    assert stopped.value.code == 2
    assert "--m2v_threads_per_worker" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- the real pools, in fresh processes ------------------------------------------------------------

POOLS_SCRIPT = """
import json, os, sys, threading
import pyarrow as pa
import beam_m2v
from beam_m2v.thread_budget import process_budget

def tasks():
    return set(os.listdir("/proc/self/task"))

model = beam_m2v.load_model(sys.argv[1])
texts = json.load(open(sys.argv[2]))
before = tasks()
model.encode(texts[:1])  # the first tokenizer call starts the tokenizer's pool (and nothing else)
tokenizer_threads = len(tasks() - before)
model.encode(texts)  # large: slices on the encode pool
print(json.dumps({
    "budget": process_budget().threads,
    "tokenizer_threads": tokenizer_threads,
    "encode_threads": sum(t.name.startswith("beam-m2v-encode") for t in threading.enumerate()),
    "arrow_threads": pa.cpu_count(),
    "parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
}))
"""


#: Every thread setting a process can inherit: ours, and the native pools' that a budget sets.
THREAD_SETTINGS = (ENV_THREADS, ENV_WORKER_PROCESSES, "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")


@pytest.fixture
def no_thread_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment without any thread setting, so the processes a test starts inherit none.

    The test process may have fixed its own budget already (its native pools' variables then
    set), and the test runner gives each of its workers a share of the cores.
    """
    for name in THREAD_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def start_fresh(script: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A new Python process running ``script``, without any thread setting but ``env``."""
    environment = {k: v for k, v in os.environ.items() if k not in THREAD_SETTINGS}
    environment.update(env, PYTHONPATH=os.pathsep.join([str(REPO), environment.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The JSON object a fresh process printed last."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_fresh(script: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    return result_of(start_fresh(script, *args, env=env))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_budget_sizes_the_tokenizer_and_encode_pools(model_64_path, corpus_texts, tmp_path):
    # Three fresh processes (at once) load the bundled model and encode 20,000 texts: ~5-15 s on 2 busy cores.
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(corpus_texts * 4))  # 20,000 texts: 3 slices on the encode pool
    cores = available_cores()
    more = cores + 1  # differs from every default here: seeing it proves the setting took effect
    started = {
        setting: start_fresh(POOLS_SCRIPT, str(model_64_path), str(texts), env=env)
        for setting, env in {"more": {ENV_THREADS: str(more)}, "one": {ENV_THREADS: "1"}, "every": {}}.items()
    }
    assert result_of(started["more"]) == {
        "budget": more,
        "tokenizer_threads": more,
        "encode_threads": more,
        "arrow_threads": min(more, os.cpu_count() or 1),  # Arrow starts with one thread per core
        "parallelism": None,
    }
    assert result_of(started["one"]) == {
        "budget": 1,
        "tokenizer_threads": 0,  # the tokenizer runs on the calling thread
        "encode_threads": 1,
        "arrow_threads": 1,
        "parallelism": "false",
    }
    every = result_of(started["every"])
    assert every["budget"] is None
    assert every["tokenizer_threads"] == cores  # the tokenizer's own default: one thread per core
    assert every["encode_threads"] == max(2, os.cpu_count() or 2)
    assert every["parallelism"] is None


DIGEST_SCRIPT = """
import hashlib, json, sys
import numpy as np
import beam_m2v
from beam_m2v.thread_budget import process_budget

all_texts = json.load(open(sys.argv[1]))
out = {}
for path, count in zip(sys.argv[2::2], sys.argv[3::2]):
    texts = all_texts[: int(count)]
    out[path] = hashlib.sha256(beam_m2v.load_model(path).encode(texts).tobytes()).hexdigest()
out["budget"] = process_budget().threads
print(json.dumps(out))
"""


def test_vectors_are_bit_identical_whatever_the_budget(model_256_path, corpus_texts, tmp_path):
    # Three fresh processes (at once) encode with two models: ~10-20 s on 2 busy cores.
    texts = corpus_texts * 4
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    unigram = build_model2vec_model(tmp_path / "unigram", kind="unigram", dim=32)  # tokenized text by text
    # 20,000 texts: 3 slices of 8,192 on the piece path; 3,500 texts: 4 chunks of 1,024 text by text.
    counts = {str(model_256_path): len(texts), str(unigram): 3500}
    models = [str(item) for pair in counts.items() for item in pair]
    settings = {"1": 1, "2": 2, "all": None}
    started = {
        setting: start_fresh(DIGEST_SCRIPT, str(tmp_path / "texts.json"), *models, env={ENV_THREADS: setting})
        for setting in settings
    }
    expected = {
        path: hashlib.sha256(beam_m2v.load_model(path).encode(texts[:count]).tobytes()).hexdigest()
        for path, count in counts.items()
    }
    for setting, process in started.items():
        got = result_of(process)
        assert got.pop("budget") == settings[setting]
        assert got == expected, f"{ENV_THREADS}={setting}"


# -- real Beam worker processes ----------------------------------------------------------------------


def report_budget(element: int, folder: str) -> int:
    """Run in an SDK worker: write this process's budget (after a real encode) to ``folder``/<pid>.json."""
    from beam_m2v.thread_budget import is_sdk_worker_process, process_budget

    resolved = process_budget()
    record = {"threads": resolved.threads, "reason": resolved.reason, "worker": is_sdk_worker_process()}
    record["rayon"] = os.environ.get("RAYON_NUM_THREADS")
    Path(folder, f"{os.getpid()}.json").write_text(json.dumps(record))
    return element


def run_reporting(options: PipelineOptions, folder: Path, model_path: str) -> list[dict[str, Any]]:
    folder.mkdir()
    texts = corpus_table().column("text").to_pylist()[:200]  # type: ignore[attr-defined]
    with pipeline_thread_budget(options), beam.Pipeline(options=options) as pipeline:
        embedded, _ = (
            pipeline
            | beam.Create(texts)
            | beam.Reshuffle()
            | beam_m2v.EmbedText(model_path, batch_size=10, min_batch_size=10)
        )
        # Through the worker-side pickled function: the module is importable in the workers (PYTHONPATH).
        _ = embedded | beam.Map(lambda result, out=str(folder): report_budget(0, out))
    reports = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    assert reports, "no worker reported"
    return reports


@pytest.mark.parametrize(("extra", "threads"), [([], "share"), ([f"--{OPTION}=3"], 3)])
def test_multi_processing_workers_take_their_share(
    extra, threads, model_64_path, tmp_path, monkeypatch, no_thread_settings
):
    # Two FnApiRunner worker processes start (Beam import and model load in each): ~10-20 s.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    options = PipelineOptions(
        ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing", *extra]
    )
    reports = run_reporting(options, tmp_path / "reports", private_model_copy(model_64_path, tmp_path))
    wanted = max(1, available_cores() // 2) if threads == "share" else threads
    for report in reports:
        assert report["worker"] is True
        assert report["threads"] == (None if wanted == available_cores() else wanted), report
        assert ("BEAM_M2V_WORKER_PROCESSES=2" if threads == "share" else "BEAM_M2V_THREADS=3") in report["reason"]
        if report["threads"] is not None:
            assert report["rayon"] == str(report["threads"])
    assert ENV_WORKER_PROCESSES not in os.environ  # the launcher's environment is restored


def test_pool_worker_without_settings_takes_one_core(model_64_path, tmp_path, no_thread_settings):
    # A Beam worker pool and its worker process start: ~10-20 s.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    with beam_worker_pool(env=env) as address:
        options = PipelineOptions(
            [
                "--runner=PortableRunner",
                "--job_endpoint=embed",
                "--environment_type=EXTERNAL",
                f"--environment_config={address}",
            ]
        )
        reports = run_reporting(options, tmp_path / "reports", private_model_copy(model_64_path, tmp_path))
    assert [(r["threads"], r["worker"]) for r in reports] == [(1, True)]
    assert "does not say" in reports[0]["reason"]


@pytest.mark.parametrize("output", ["out", "out.lance"], ids=["parquet-folder", "lance-dataset"])
def test_embed_in_one_process_follows_the_explicit_option(output, model_64_path, tmp_path):
    # A whole `python -m pipelines.embed` process on the bundled sample: ~5-10 s.
    environment = {k: v for k, v in os.environ.items() if k not in THREAD_SETTINGS}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), environment.get("PYTHONPATH", "")])
    sample = REPO / "samples" / "linux-doc-sample.parquet"
    command = [sys.executable, "-m", "pipelines.embed", "--input", str(sample), "--model", str(model_64_path)]
    command += ["--output", str(tmp_path / output), f"--{OPTION}=1"]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"beam-m2v threads: 1 core for this process (--{OPTION}=1)" in done.stderr


@pytest.mark.parametrize("mode", ["multi_processing", "in_memory", "multi_threading"])
def test_the_interpreter_path_is_shell_quoted_only_while_multi_processing_workers_start(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    import shlex

    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_m2v.transforms.local_workers import startable_local_workers

    path = "/home/me/My Projects/.venv/bin/python"
    monkeypatch.setattr(sys, "executable", path)
    options = PipelineOptions(["--runner=FnApiRunner", f"--direct_running_mode={mode}"])
    with startable_local_workers(options):
        inside = sys.executable
    if mode == "multi_processing":  # the shell reads Beam's worker command line back into the real path
        assert shlex.split(f"{inside} -m apache_beam.runners.worker.sdk_worker_main")[0] == path
    else:
        assert inside == path
    assert sys.executable == path
