"""What a run may replace, where it stages, when it refuses to publish: real runs on real folders.

Refusals go through ``python -m pipelines.embed`` / ``pipelines.reembed`` subprocesses and check
that the folder named by ``--output`` is untouched byte for byte. Killed and concurrent runs are
real processes stopped with signals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

import beam_m2v
from pipelines import embed, reembed
from pipelines.inputs import InputError
from pipelines.outputs import OutputError, RunRejected, check_output
from tests.conftest import REPO, corpus_table, links_into
from tests.test_pipeline_embed import run_command, subprocess_env
from tests.test_remote_models import BUCKET, S3, moto_server

CONSOLE = Path(sys.executable).parent / "beam-m2v"


# -- helpers -------------------------------------------------------------------------------------


def tree_state(root: Path) -> dict[str, Any]:
    """Every entry under ``root`` (or ``root`` itself, a file): type, content digest, mode and mtime."""

    def entry(path: Path) -> Any:
        info = path.lstat()
        if path.is_symlink():
            return ("link", os.readlink(path))
        if path.is_dir():
            return ("dir", info.st_mode)
        return ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mode, info.st_mtime_ns)

    if not root.is_dir() or root.is_symlink():
        return {".": entry(root)}
    state = {".": entry(root)}
    for folder, names, files in os.walk(root):
        for name in names + files:
            path = Path(folder) / name
            state[str(path.relative_to(root))] = entry(path)
    return state


def program(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m pipelines.<name> ARGS``."""
    return run_command([sys.executable, "-m", f"pipelines.{name}", *args], cwd)


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report an error (Beam's own import warnings aside)."""
    return [line for line in stderr.splitlines() if "error:" in line or "not published:" in line]


def refused(process: subprocess.CompletedProcess[str], command: str = "embed") -> str:
    """A start-up refusal: exit 2, no traceback, exactly one error line; returns it."""
    assert process.returncode == 2, f"exit {process.returncode}\n{process.stderr[-3000:]}"
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    lines = error_lines(process.stderr)
    assert len(lines) == 1, process.stderr[-3000:]
    assert lines[0].startswith(f"beam-m2v {command}: error: "), lines
    return lines[0]


def hidden_siblings(out: Path) -> list[str]:
    """What runs put beside ``out``: staging folders, lock files, rejected folders."""
    return sorted(path.name for path in out.parent.iterdir() if path.name.startswith(f".{out.name}."))


def write_corpus(folder: Path, rows: int, start: int = 0) -> Path:
    """``rows`` corpus rows as ``folder/corpus.parquet``."""
    folder.mkdir(parents=True, exist_ok=True)
    table: pa.Table = corpus_table()
    pq.write_table(table.slice(start, rows), folder / "corpus.parquet", row_group_size=500)
    return folder / "corpus.parquet"


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def model_args(model_64_path: Path) -> list[str]:
    return ["--model", str(model_64_path)]


@pytest.fixture(scope="module")
def model(model_64_path: Path) -> beam_m2v.StaticEmbedder:
    return beam_m2v.load_model(model_64_path)


@pytest.fixture(scope="module")
def small_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 corpus rows in one Parquet file."""
    return write_corpus(tmp_path_factory.mktemp("small-input"), 300)


@pytest.fixture(scope="module")
def finished_output(small_input: Path, model_64_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published output of ``small_input`` (copy it before changing anything)."""
    out = tmp_path_factory.mktemp("finished") / "vectors"
    embed.run(["--input", str(small_input), "--output", str(out), *model_args(model_64_path)])
    return out


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 corpus rows, twice over in two files: 2,000 rows, more than ``small_input``'s 300.

    The runs on it are stopped (SIGSTOP, SIGKILL) as soon as their staging folder exists, which is
    before the pipeline is even built, so its size does not decide whether they can be caught.
    """
    folder = tmp_path_factory.mktemp("big-input")
    table: pa.Table = corpus_table().slice(0, 1000)
    for part in range(2):
        shifted = table.set_column(0, "id", pa.array(np.arange(len(table)) + part * len(table)))
        pq.write_table(shifted, folder / f"corpus-{part}.parquet", row_group_size=500)
    return folder


def copy_output(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def all_failing_jsonl(path: Path, rows: int) -> Path:
    """JSONL whose every text holds a lone surrogate (written as a JSON escape): every row is a dead letter."""
    return write_jsonl(path, [{"id": i, "text": f"text {i} \ud800"} for i in range(rows)])


# -- what --output may be --------------------------------------------------------------------------


def _input_folder(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    folder = tmp / "corpus"
    folder.mkdir()
    shutil.copy(small_input, folder / "corpus.parquet")
    return str(folder), folder, tmp


def _current_folder(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    work = tmp / "work"
    work.mkdir()
    shutil.copy(small_input, work / "corpus.parquet")
    (work / "notes.txt").write_text("my notes\n")
    return ".", work, work


def _home_folder(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    home = tmp / "home"
    (home / "projects").mkdir(parents=True)
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (home / "projects" / "app.py").write_text("print('hello')\n")
    (home / "todo.txt").write_text("buy milk\n")
    return str(home), home, tmp


def _regular_file(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    target = tmp / "vectors.parquet"
    shutil.copy(small_input, target)
    return str(target), target, tmp


def _foreign_manifest(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    webapp = tmp / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my app", "icons": []}\n')
    (webapp / "index.html").write_text("<html></html>\n")
    return str(webapp), webapp, tmp


def _garbled_manifest(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    folder = tmp / "vectors"
    folder.mkdir()
    (folder / "_manifest.json").write_text("not json at all")
    shutil.copy(small_input, folder / "part-00000-of-00001.parquet")
    return str(folder), folder, tmp


def _output_with_own_files(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    out = copy_output(finished, tmp / "vectors")
    (out / "README.txt").write_text("what these vectors are for\n")
    return str(out), out, tmp


def _folder_of_outputs(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    folder = tmp / "vectors"
    folder.mkdir()
    copy_output(finished, folder / "2026-11-24")
    return str(folder), folder, tmp


def _link_to_input_folder(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    folder = tmp / "corpus"
    folder.mkdir()
    shutil.copy(small_input, folder / "corpus.parquet")
    (tmp / "link").symlink_to(folder, target_is_directory=True)
    return str(tmp / "link"), tmp, tmp


def _link_loop(tmp: Path, small_input: Path, finished: Path) -> tuple[str, Path, Path]:
    (tmp / "loop").symlink_to(tmp / "loop")
    return str(tmp / "loop"), tmp, tmp


# (make, why): folders a run must never replace.
REFUSED = [
    pytest.param(_input_folder, "no beam-m2v manifest", id="input-folder"),
    pytest.param(_current_folder, "no beam-m2v manifest", id="current-folder"),
    pytest.param(_home_folder, "no beam-m2v manifest", id="home-folder"),
    pytest.param(_regular_file, "is a file", id="regular-file"),
    pytest.param(_foreign_manifest, "no beam-m2v manifest", id="manifest-json-of-another-program"),
    pytest.param(_garbled_manifest, "no beam-m2v manifest", id="garbled-manifest"),
    pytest.param(_output_with_own_files, "'README.txt', which beam-m2v did not write", id="output-plus-a-file"),
    pytest.param(_folder_of_outputs, "no beam-m2v manifest", id="folder-of-outputs"),
    pytest.param(_link_to_input_folder, "no beam-m2v manifest", id="symlink-to-input-folder"),
    pytest.param(_link_loop, "symbolic link that leads nowhere", id="symlink-loop"),
]


def refusal_cases(cases: list[Any], through_subprocess: str) -> list[Any]:
    """``cases`` with a third value: whether the case runs as a real program (``python -m pipelines.NAME``).

    One case per program is a real process, which shows the exit code and the absence of a traceback
    as a user sees them; the others call ``main(argv)`` in-process (the same code, without the 3 s of
    Python and Beam start-up each).
    """
    return [pytest.param(*case.values, case.id == through_subprocess, id=case.id) for case in cases]


def run_refused(command: str, args: list[str], cwd: Path, through_subprocess: bool, capsys: Any) -> str:
    """Run a program that must refuse at start-up; returns its one error line."""
    if through_subprocess:
        return refused(program(command, *args, cwd=cwd), command)
    main = {"embed": embed.main, "reembed": reembed.main}[command]
    here = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(args)
    finally:
        os.chdir(here)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = error_lines(err)
    assert line.startswith(f"beam-m2v {command}: error: "), line
    return line


@pytest.mark.parametrize(("make", "why", "through_subprocess"), refusal_cases(REFUSED, "current-folder"))
def test_embed_refuses_an_output_it_must_not_replace(
    make, why, through_subprocess, small_input, finished_output, model_64_path, tmp_path, capsys
):
    output, watched, cwd = make(tmp_path, small_input, finished_output)
    before = tree_state(watched)
    args = ["--input", str(small_input), "--output", output, *model_args(model_64_path)]
    line = run_refused("embed", args, cwd, through_subprocess, capsys)
    assert f"--output {output!r}" in line and why in line, line
    assert tree_state(watched) == before
    assert not [name for name in os.listdir(tmp_path) if ".staging-" in name or ".rejected-" in name]


@pytest.mark.parametrize(
    ("make", "why", "through_subprocess"), refusal_cases([REFUSED[0], REFUSED[3], REFUSED[6]], "input-folder")
)
def test_reembed_refuses_an_output_it_must_not_replace(
    make, why, through_subprocess, small_input, finished_output, model_64_path, tmp_path, capsys
):
    output, watched, cwd = make(tmp_path, small_input, finished_output)
    before = tree_state(watched)
    previous = copy_output(finished_output, tmp_path / "previous")
    args = ["--input", str(small_input), "--previous", str(previous), "--output", output, *model_args(model_64_path)]
    line = run_refused("reembed", args, cwd, through_subprocess, capsys)
    assert f"--output {output!r}" in line and why in line, line
    assert tree_state(watched) == before


def test_an_output_is_checked_before_the_model_is_loaded(small_input, tmp_path, capsys):
    """The refusal names the output even when the model does not exist: nothing else was done first."""
    target = tmp_path / "file.txt"
    target.write_text("keep me\n")
    args = ["--input", str(small_input), "--output", str(target), "--model", str(tmp_path / "no")]
    assert "is a file" in run_refused("embed", args, REPO, False, capsys)
    assert target.read_text() == "keep me\n"


def test_outputs_a_run_may_write(small_input, finished_output, model_64_path, model, tmp_path):
    args = ["--input", str(small_input), *model_args(model_64_path)]
    absent = tmp_path / "a" / "b" / "vectors"
    empty = tmp_path / "empty"
    empty.mkdir()
    older = copy_output(finished_output, tmp_path / "older")  # an output in the layout of older versions
    (older / "_manifest.json").rename(older / "manifest.json")
    (older / "_failed").rename(older / "failed")
    (older / "changes").mkdir()
    shutil.copy(next(older.glob("part-*.parquet")), older / "changes" / "upserts-00000-of-00001.parquet")
    target = copy_output(finished_output, tmp_path / "target")
    link = tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    for out in (absent, empty, older, link):
        manifest = embed.run([*args, "--output", str(out)])
        assert manifest["rows"] == {"read": 300, "embedded": 300, "failed": 0}
        assert sorted(os.listdir(out)) == ["_failed", "_manifest.json", "part-00000-of-00001.parquet"], out
        assert ds.dataset(str(out)).count_rows() == 300
        assert hidden_siblings(out) == []
    assert link.is_symlink() and os.readlink(link) == str(target)


def test_an_empty_output_path_is_refused(small_input, model_64_path, capsys):
    args = ["--input", str(small_input), "--output", "", *model_args(model_64_path)]
    line = run_refused("embed", args, REPO, False, capsys)
    assert "--output is empty" in line


def test_object_store_output_with_pattern_characters_is_refused():
    for url in ("s3://bucket/vectors[1]", "gs://bucket/a*/vectors", "s3://bucket/what?"):
        with pytest.raises(OutputError, match="on object stores the output path cannot hold"):
            check_output(url)


# -- input columns named like output columns -----------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "options", "option"),
    [
        ({"id": [1, 2], "text": ["a", "b"], "embedding": [0.5, 0.25]}, ["--keep-columns", "embedding"], "--keep"),
        ({"id": [1, 2], "text": ["a", "b"], "text_hash": ["x", "y"]}, ["--keep-columns", "text_hash"], "--keep"),
        ({"embedding": [1, 2], "text": ["a", "b"]}, ["--id-column", "embedding"], "--id-column"),
        ({"id": [1, 2], "text_hash": ["a", "b"]}, ["--text-column", "text_hash"], "--text-column"),
    ],
    ids=["keep-embedding", "keep-text-hash", "id-named-embedding", "text-named-text-hash"],
)
def test_an_input_column_named_like_an_output_column_is_refused(
    columns, options, option, model_64_path, tmp_path, capsys
):
    pq.write_table(pa.table(columns), tmp_path / "in.parquet")
    out = tmp_path / "vectors"
    code = embed.main(
        ["--input", str(tmp_path / "in.parquet"), "--output", str(out), *model_args(model_64_path), *options]
    )
    assert code == 2
    (line,) = error_lines(capsys.readouterr().err)
    clash = options[1]
    assert f"input column {clash!r} ({option}" in line and "has the name of a column beam-m2v adds" in line, line
    assert not out.exists() and hidden_siblings(out) == []


# -- the failure threshold -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "nan"])
def test_max_failed_fraction_must_be_a_number_from_0_to_1(value, small_input, model_64_path, tmp_path, capsys):
    """One value through a real program, the others in-process (the same argument check)."""
    out = tmp_path / "vectors"
    args = ["--input", str(small_input), "--output", str(out), "--max-failed-fraction", value]
    line = run_refused("embed", [*args, *model_args(model_64_path)], REPO, value == "abc", capsys)
    assert "--max-failed-fraction must be a number from 0 to 1" in line and repr(value) in line, line
    assert not out.exists() and hidden_siblings(out) == []


def test_a_run_where_every_row_failed_does_not_replace_the_output(finished_output, model_64_path, tmp_path):
    out = copy_output(finished_output, tmp_path / "vectors")
    before = tree_state(out)
    source = all_failing_jsonl(tmp_path / "broken.jsonl", 250)
    process = program("embed", "--input", str(source), "--output", str(out), *model_args(model_64_path))
    assert process.returncode == 3, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    (line,) = error_lines(process.stderr)
    assert line.startswith("beam-m2v embed: not published: 250 of 250 rows failed (100.0%"), line
    assert tree_state(out) == before
    (rejected,) = hidden_siblings(out)
    assert rejected.startswith(".vectors.rejected-")
    kept = tmp_path / rejected
    assert f"{out} was not replaced" in line and str(kept / "_failed") in line, line
    letters = [json.loads(x) for path in (kept / "_failed").glob("*.jsonl") for x in path.read_text().splitlines()]
    assert sorted(letter["id"] for letter in letters) == list(range(250))
    assert {letter["error_type"] for letter in letters} == {"InvalidUnicode"}
    manifest = json.loads((kept / "_manifest.json").read_text())
    assert manifest["published"] is False and "250 of 250 rows failed" in manifest["rejected_because"]
    assert manifest["rows"] == {"read": 250, "embedded": 0, "failed": 250}
    assert sorted(os.listdir(kept)) == ["_failed", "_manifest.json"]  # no vectors kept


def test_the_threshold_is_a_limit_on_the_failed_fraction(model_64_path, model, tmp_path, capsys):
    """1 row of 10 failing is 10%: published under the default 0.1, rejected (exit 3) under 0.05."""
    records: list[dict[str, Any]] = [{"id": i, "text": f"paragraph number {i}"} for i in range(10)]
    records[4]["text"] = None
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "vectors"
    args = ["--input", str(source), "--output", str(out), *model_args(model_64_path)]
    assert embed.main([*args, "--max-failed-fraction", "0.05"]) == 3
    (line,) = error_lines(capsys.readouterr().err)
    assert "1 of 10 rows failed (10.0%, above --max-failed-fraction 0.05)" in line, line
    assert not out.exists()
    assert embed.main(args) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == {"read": 10, "embedded": 9, "failed": 1}
    table = ds.dataset(str(out)).to_table().sort_by("id")
    expected = model.encode([f"paragraph number {i}" for i in range(10) if i != 4])
    assert np.array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), expected)


def test_an_input_without_rows_is_refused_at_start_up(finished_output, model_64_path, tmp_path):
    out = copy_output(finished_output, tmp_path / "vectors")
    before = tree_state(out)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), empty)
    with pytest.raises(InputError, match="the input has no rows"):
        embed.run(["--input", str(empty), "--output", str(out), *model_args(model_64_path)])
    assert tree_state(out) == before


def test_reembed_with_every_row_failing_keeps_the_previous_output(finished_output, model_64_path, tmp_path):
    out = copy_output(finished_output, tmp_path / "vectors")
    before = tree_state(out)
    source = all_failing_jsonl(tmp_path / "broken.jsonl", 300)
    args = ["--input", str(source), "--previous", str(out), "--output", str(out), *model_args(model_64_path)]
    with pytest.raises(RunRejected, match="300 of 300 rows failed"):
        reembed.run(args)
    assert tree_state(out) == before
    assert [name.split("-")[0] for name in hidden_siblings(out)] == [".vectors.rejected"]


def test_reembed_may_replace_its_own_previous_output(finished_output, small_input, model_64_path, tmp_path):
    """A second run on the same day: --previous and --output name the same folder."""
    out = copy_output(finished_output, tmp_path / "vectors")
    before = ds.dataset(str(out)).to_table().sort_by("id")
    args = ["--input", str(small_input), "--previous", str(out), "--output", str(out), *model_args(model_64_path)]
    manifest = reembed.run(args)
    assert (manifest["rows"]["unchanged"], manifest["rows"]["encoded"]) == (300, 0)
    after = ds.dataset(str(out)).to_table().sort_by("id")
    assert after.select(["id", "embedding", "text_hash"]).equals(before.select(["id", "embedding", "text_hash"]))
    assert hidden_siblings(out) == []


# -- staging: killed and concurrent runs ---------------------------------------------------------


def start_embed(source: Path, out: Path, model_64_path: Path) -> subprocess.Popen[str]:
    """``python -m pipelines.embed`` in its own process group (so signals reach its workers too)."""
    args = ["--input", str(source / "*.parquet"), "--output", str(out), "--model", str(model_64_path)]
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.embed", *args],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_staging(process: subprocess.Popen[str], out: Path, timeout: float = 60.0) -> Path:
    """The staging folder of a starting run, once it and its lock file exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        folders = [
            out.parent / name for name in hidden_siblings(out) if re.fullmatch(r".+\.staging-[0-9a-f]{12}", name)
        ]
        if folders and Path(f"{folders[0]}.lock").exists():
            return folders[0]
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.005)
    raise AssertionError("the run made no staging folder")


def test_a_killed_runs_staging_is_hidden_and_removed_by_the_next_run(
    big_input, small_input, finished_output, model_64_path, tmp_path
):
    """A killed program, then two in-process runs (one rejected, one published): about 6 s on an idle machine."""
    out = copy_output(finished_output, tmp_path / "vectors")
    before = tree_state(out)
    process = start_embed(big_input, out, model_64_path)
    staging = wait_for_staging(process, out)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert tree_state(out) == before
    assert staging.is_dir() and Path(f"{staging}.lock").exists()
    # No glob of outputs matches what the killed run left: `ls -d vectors*` lists the output only.
    assert sorted(path.name for path in tmp_path.glob("vectors*")) == ["vectors"]

    # A later run that is not published removes the dead staging and leaves the output as it was.
    with pytest.raises(RunRejected):
        broken = all_failing_jsonl(tmp_path / "broken.jsonl", 20)
        embed.run(["--input", str(broken), "--output", str(out), *model_args(model_64_path)])
    assert not staging.exists() and not Path(f"{staging}.lock").exists()
    assert tree_state(out) == before
    # and a run that is published replaces it.
    manifest = embed.run(
        ["--input", str(write_corpus(tmp_path / "next", 40, 4000)), "--output", str(out), *model_args(model_64_path)]
    )
    assert manifest["rows"]["embedded"] == 40 == ds.dataset(str(out)).count_rows()
    assert [name for name in hidden_siblings(out) if ".staging-" in name] == []


def test_a_live_runs_staging_is_left_alone(big_input, small_input, model_64_path, tmp_path):
    """A 2,000-row program stopped while a concurrent run publishes, then resumed: about 6 s on an idle machine."""
    out = tmp_path / "vectors"
    process = start_embed(big_input, out, model_64_path)
    try:
        staging = wait_for_staging(process, out)
        os.killpg(process.pid, signal.SIGSTOP)  # alive, holding its lock, but not progressing
        live_before = tree_state(staging)
        manifest = embed.run(["--input", str(small_input), "--output", str(out), *model_args(model_64_path)])
        assert manifest["rows"]["embedded"] == 300
        assert tree_state(staging) == live_before
        assert Path(f"{staging}.lock").exists()
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    # The live run finished and published over the concurrent run's output.
    published = json.loads((out / "_manifest.json").read_text())
    assert published["rows"] == {"read": 2_000, "embedded": 2_000, "failed": 0}
    assert ds.dataset(str(out)).count_rows() == 2_000
    assert hidden_siblings(out) == []


# -- pattern characters in paths -----------------------------------------------------------------


def test_pattern_characters_in_output_and_previous_paths(small_input, model_64_path, model, tmp_path):
    folder = tmp_path / "we[ir]d*{x}?"
    first, second = folder / "vec[1]", folder / "vec?[2]*"
    args = ["--input", str(small_input), *model_args(model_64_path)]
    assert embed.run([*args, "--output", str(first)])["rows"]["embedded"] == 300
    manifest = reembed.run([*args, "--previous", str(first), "--output", str(second)])
    assert manifest["rows"]["unchanged"] == 300 and manifest["rows"]["embedded"] == 300
    texts = dict(zip(*(corpus_table().slice(0, 300).column(c).to_pylist() for c in ("id", "text")), strict=True))
    for out in (first, second):
        table = ds.dataset(str(out)).to_table().sort_by("id")
        assert table.column("id").to_pylist() == sorted(texts)
        vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        assert np.array_equal(vectors, model.encode([texts[i] for i in sorted(texts)]))
        assert hidden_siblings(out) == []
    assert sorted(os.listdir(folder)) == ["vec?[2]*", "vec[1]"]
    assert links_into(tmp_path) == []  # the runs removed their glob-free aliases


# -- reembed when the id type changed ------------------------------------------------------------


def test_reembed_refuses_ids_of_another_type(finished_output, model_64_path, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"doc-{i}", "text": f"text {i}"} for i in range(20)])
    out = tmp_path / "vectors"
    args = ["--input", str(source), "--previous", str(finished_output), "--output", str(out)]
    assert reembed.main([*args, *model_args(model_64_path)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "holds ids of type int64 in 'id' but the input's are string" in line, line
    assert not out.exists() and hidden_siblings(out) == []


def test_reembed_accepts_wider_integer_ids(model_64_path, model, tmp_path):
    table: pa.Table = corpus_table().slice(0, 200)
    narrow = table.set_column(0, "id", table.column("id").cast(pa.int32()))
    (tmp_path / "day1").mkdir()
    pq.write_table(narrow, tmp_path / "day1" / "in.parquet")
    day1, day2 = tmp_path / "out1", tmp_path / "out2"
    embed.run(["--input", str(tmp_path / "day1" / "in.parquet"), "--output", str(day1), *model_args(model_64_path)])
    source = write_corpus(tmp_path / "day2", 200)  # the same rows, int64 ids
    manifest = reembed.run(
        ["--input", str(source), "--previous", str(day1), "--output", str(day2), *model_args(model_64_path)]
    )
    assert manifest["rows"]["unchanged"] == 200 and manifest["rows"]["encoded"] == 0
    snapshot = ds.dataset(str(day2)).to_table().sort_by("id")
    assert snapshot.schema.field("id").type == pa.int64()
    assert snapshot.column("id").to_pylist() == list(range(200))


# -- the nightly cron recipe ---------------------------------------------------------------------


def cron_line() -> str:
    """The crontab line of docs/output-format.md."""
    text = (REPO / "docs" / "output-format.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```cron\n(.*?)\n```", text, flags=re.S)
    (line,) = block.splitlines()
    return line


def run_cron_line(line: str, root: Path, corpus: Path, model_64_path: Path) -> subprocess.CompletedProcess[str]:
    """What cron runs: the command after the five time fields, with ``\\%`` turned into ``%``, by /bin/sh.

    The paths put in place of the recipe's are quoted for the shell, as a user would quote theirs
    (the repository's may hold a space); the corpus pattern already stands inside quotes.
    """
    command = line.split(None, 5)[5].replace("\\%", "%")
    for placeholder, value in (
        ("/srv/embeddings", shlex.quote(str(root))),
        (".venv/bin/beam-m2v", shlex.quote(str(CONSOLE))),
        ("/data/corpus/*.parquet", str(corpus / "*.parquet")),
        ("minishlab/potion-base-8M", shlex.quote(str(model_64_path))),
    ):
        assert placeholder in command, placeholder
        command = command.replace(placeholder, value)
    return subprocess.run(["/bin/sh", "-c", command], env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_the_cron_recipe_embeds_the_first_night_and_reembeds_later(model_64_path, tmp_path):
    """Two full runs of the console script, the first night then a later one: about 8 s on an idle machine."""
    line = cron_line()
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 500)
    (tmp_path / "vectors").mkdir()

    first = run_cron_line(line, tmp_path, corpus, model_64_path)
    assert first.returncode == 0, (tmp_path / "nightly.log").read_text()[-3000:]
    (night1,) = (tmp_path / "vectors").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", night1.name)
    assert "previous" not in json.loads((night1 / "_manifest.json").read_text())

    # As if that was an earlier night; beside it, what must never be taken as --previous.
    earlier = night1.rename(tmp_path / "vectors" / "2000-01-01")
    leftover = tmp_path / "vectors" / "2099-12-31.staging-0123456789ab"  # a killed run of an older version
    leftover.mkdir()
    shutil.copy(next(earlier.glob("part-*.parquet")), leftover / "part-00000-of-00001.parquet")
    write_corpus(corpus, 500, start=100)  # 100 rows gone, 100 new

    second = run_cron_line(line, tmp_path, corpus, model_64_path)
    assert second.returncode == 0, (tmp_path / "nightly.log").read_text()[-3000:]
    night2 = tmp_path / "vectors" / night1.name
    manifest = json.loads((night2 / "_manifest.json").read_text())
    assert manifest["previous"] == str(earlier)
    rows = manifest["rows"]
    assert (rows["unchanged"], rows["new"], rows["deleted"], rows["embedded"]) == (400, 100, 100, 500)
    log = (tmp_path / "nightly.log").read_text()
    assert log.count("done: ") >= 2, log[-3000:]


# -- object stores (moto's S3 server on loopback) ------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's S3 server on a free loopback port with an empty bucket."""
    with moto_server(tmp_path_factory.mktemp("moto"), BUCKET) as server:
        yield server


def objects(store: S3, prefix: str) -> dict[str, str]:
    """Key (below ``prefix``) -> ETag of every object under ``prefix``."""
    listed = store.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {entry["Key"][len(prefix) :]: entry["ETag"] for entry in listed}


def test_object_store_outputs_are_checked_replaced_and_rejected(store, small_input, model_64_path, tmp_path, caplog):
    """Two in-process runs and two refusals against moto: Beam's S3 filesystem makes a boto3 client for every
    call (about 30 per run); with botocore's data parsed once (``moto_server``) this takes about 6 s."""
    previous_options = FileSystems._pipeline_options
    out = f"s3://{BUCKET}/nightly/vectors"
    args = ["--model", str(model_64_path), "--runner=FnApiRunner", *store.options]
    try:
        manifest = embed.run(["--input", str(small_input), "--output", out, *args])
        assert manifest["rows"]["embedded"] == 300
        first = objects(store, "nightly/")
        assert "vectors/_manifest.json" in first and any(key.startswith("vectors/part-") for key in first), first
        assert not [key for key in first if not key.startswith("vectors/")], first  # no staging left

        # A prefix holding objects beam-m2v did not write is refused, and left as it was.
        store.put("shared/notes.txt", b"keep me")
        with pytest.raises(OutputError, match="no beam-m2v manifest"):
            embed.run(["--input", str(small_input), "--output", f"s3://{BUCKET}/shared", *args])
        with pytest.raises(OutputError, match="is an object"):
            embed.run(["--input", str(small_input), "--output", f"s3://{BUCKET}/shared/notes.txt", *args])
        assert objects(store, "shared/") == {"notes.txt": objects(store, "shared/")["notes.txt"]}

        # Too many failures: the previous objects stay, the dead letters are kept beside them; a staging
        # prefix of a killed (or running) run is never deleted, only reported.
        store.put("nightly/.vectors.staging-0123456789ab/part-00000-of-00001.parquet", b"not finished")
        caplog.set_level(logging.WARNING, logger="beam_m2v.outputs")
        broken = all_failing_jsonl(tmp_path / "broken.jsonl", 30)
        with pytest.raises(RunRejected, match="30 of 30 rows failed"):
            embed.run(["--input", str(broken), "--output", out, *args])
        after = objects(store, "nightly/")
        assert {key: tag for key, tag in after.items() if key.startswith("vectors/")} == first
        rejected = sorted({key.split("/")[0] for key in after if key.startswith(".vectors.rejected-")})
        assert len(rejected) == 1, after
        letters = [key for key in after if key.startswith(f"{rejected[0]}/_failed/")]
        body = b"".join(store.client.get_object(Bucket=BUCKET, Key=f"nightly/{key}")["Body"].read() for key in letters)
        assert len(body.splitlines()) == 30
        staged = [key for key in after if ".staging-" in key]
        assert staged == [".vectors.staging-0123456789ab/part-00000-of-00001.parquet"], after
        assert any(".vectors.staging-0123456789ab" in record.getMessage() for record in caplog.records)
    finally:
        FileSystems.set_options(previous_options)


def test_a_dead_letter_with_bytes_and_lone_surrogates_is_still_one_json_line():
    from beam_m2v.transforms.dead_letters import FailedElement
    from pipelines.outputs import dead_letter_json

    element = {"id": b"\xff", "text": "\udc80", "__source": b"part-1.parquet", "__position": 3}
    line = dead_letter_json(FailedElement(element=element, error_type="InvalidUtf8", reason="bad \udc80"), "id", "text")
    record = json.loads(line)
    line.encode("utf-8")  # writable as UTF-8
    assert record["source"] == "part-1.parquet" and record["position"] == 3
    assert record["error_type"] == "InvalidUtf8" and "\n" not in line


@pytest.mark.parametrize("line_break", ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028", "\u2029"])
def test_a_dead_letter_is_one_line_for_every_line_splitter(line_break: str) -> None:
    from beam_m2v.transforms.dead_letters import FailedElement
    from pipelines.outputs import dead_letter_json

    text = f"before{line_break}after"
    element = {"id": f"id{line_break}1", "text": text, "__source": f"day{line_break}1.jsonl", "__position": 7}
    line = dead_letter_json(FailedElement(element=element, error_type="Bad", reason=f"why{line_break}"), "id", "text")
    assert line.splitlines() == [line] and len(line.encode("utf-8").splitlines()) == 1
    record = json.loads(line)
    assert (record["id"], record["value"], record["source"]) == (f"id{line_break}1", text, f"day{line_break}1.jsonl")
