"""The command line as a user meets it: help, version, Beam-style spellings, typos, progress, one summary.

Every run here is a real ``beam-m2v`` process on FnApiRunner with the bundled model; progress is
checked by its content (counts, order, totals), never by timing.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import beam_m2v
from pipelines import cli, embed, reembed, show
from pipelines.progress import format_bytes, format_duration, gzip_recorded_size
from tests.conftest import REPO, corpus_jsonl_lines, corpus_table

CONSOLE = str(Path(sys.executable).parent / "beam-m2v")
MODEL = "models/m2v-minilm-64"
SUMMARY = re.compile(r"^done: ([\d,]+) rows read, ([\d,]+) embedded, ([\d,]+) failed", re.MULTILINE)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) beam_m2v\.[a-z_]+: ")
ROWS_PROGRESS = re.compile(r"INFO beam_m2v\.progress: ([\d,]+) of ([\d,]+) rows \((\d+\.\d)%\)")
BYTES_PROGRESS = re.compile(r"INFO beam_m2v\.progress: (.+?) of (.+?) read, ([\d,]+) rows written(?: \((\d+\.\d)%\))?")


def env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }


def beam_m2v_command(*args: str, stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """The installed ``beam-m2v`` console script, run from the repository root."""
    return subprocess.run(
        [CONSOLE, *args], cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300
    )


def in_process(*args: str, capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """``beam-m2v ARGS`` through the console command's ``main`` in this process (``--help`` exits through argparse).

    The same dispatch and parsers as the installed script, without 2-3 s of Python and Beam start-up;
    one case of each kind still runs the installed script.
    """
    try:
        code = cli.main(list(args))
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([CONSOLE, *args], code, captured.out, captured.err)


def number(text: str) -> int:
    return int(text.replace(",", ""))


# -- help and version ------------------------------------------------------------------------------


@pytest.mark.parametrize("make_parser", [embed.parser, reembed.parser, show.parser], ids=["embed", "reembed", "show"])
def test_every_option_has_a_plain_description_and_its_default(make_parser) -> None:
    parser: argparse.ArgumentParser = make_parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and len(action.help) > 10, f"{name} has no description"
        assert "``" not in action.help and ":func:" not in action.help, f"{name}: markup in the help"
        if action.default not in (None, "", False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text or (
                isinstance(action, argparse.BooleanOptionalAction) and "(default: --byte-stream-split)" in text
            ), f"{name}: its default {action.default!r} is not shown"
    assert "``" not in text


@pytest.mark.parametrize("command", ["embed", "reembed"])
def test_help_shows_defaults_and_beam_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``embed --help`` through the installed script (no Beam import noise on its stderr), ``reembed --help``
    in-process (the same help code)."""
    process = (
        beam_m2v_command(command, "--help") if command == "embed" else in_process(command, "--help", capsys=capsys)
    )
    assert process.returncode == 0, process.stderr
    text = " ".join(process.stdout.split())
    for expected in (
        "(default: minishlab/potion-base-8M)",
        "--text-column NAME column (Parquet) or field (JSONL) with the text to embed (default: text)",
        "(default: id;",
        "(default: 50000)",
        "(default: --byte-stream-split)",
        "Every other argument is an Apache Beam pipeline option",
        "--runner DataflowRunner",
        "--direct_num_workers 2",
        "(--id_column is --id-column)",
    ):
        assert expected in text, expected
    assert ("--previous FOLDER" in text) is (command == "reembed")
    assert process.stderr == ""  # no Beam import noise


def test_show_help(capsys: pytest.CaptureFixture[str]) -> None:
    shown = in_process("show", "--help", capsys=capsys)
    assert shown.returncode == 0 and "(default: 5)" in shown.stdout and "OUTPUT" in shown.stdout
    assert "Beam pipeline option" not in shown.stdout  # show takes no pipeline options


def test_versions(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` through the installed script, the other spellings in-process (the same dispatch)."""
    expected = f"beam-m2v {beam_m2v.__version__} (apache-beam "
    for args in (["--version"], ["embed", "--version"], ["show", "--version"]):
        process = beam_m2v_command(*args) if args == ["--version"] else in_process(*args, capsys=capsys)
        assert process.returncode == 0, process.stderr
        assert process.stdout.startswith(expected), (args, process.stdout)
    usage = in_process("--help", capsys=capsys)
    assert "beam-m2v --version" in usage.stdout


# -- Beam-style spellings and unknown arguments ----------------------------------------------------


def test_underscore_spellings_are_ours_and_unknown_arguments_are_named(tmp_path: Path) -> None:
    table = corpus_table().slice(0, 300).rename_columns(["doc_id", "body"])
    pq.write_table(table, tmp_path / "corpus.parquet")
    out = tmp_path / "vectors"
    process = beam_m2v_command(
        "embed",
        *("--input", str(tmp_path / "corpus.parquet"), "--output", str(out), "--model", MODEL),
        *("--id_column", "doc_id", "--text_column=body", "--progress_seconds", "0"),
        *("--foo_bar", "3", "--direct_num_wrkers", "1"),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["rows"] == {"read": 300, "embedded": 300, "failed": 0}
    written = pq.read_table(next(out.glob("part-*.parquet")))
    assert written.column_names[0] == "doc_id"
    warnings = [line for line in process.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 2, process.stderr
    assert "--foo_bar 3 is neither a beam-m2v option nor a Beam pipeline option" in warnings[0]
    assert "--direct_num_wrkers 1 is neither" in warnings[1] and "did you mean --direct_num_workers?" in warnings[1]
    assert "Unparseable argument" not in process.stderr  # Beam's own, less clear, warnings are not repeated
    assert "beam_m2v.progress" not in process.stderr  # --progress_seconds 0: no progress lines at all
    assert "apitools" not in process.stderr and "Resource module" not in process.stderr
    assert all(LOG_LINE.match(line) for line in process.stderr.splitlines()), process.stderr


# -- progress and the summary ----------------------------------------------------------------------


def test_parquet_progress_lines_count_rows_of_the_total(tmp_path: Path) -> None:
    table = corpus_table()
    for part in range(2):  # 5,000 rows in 2 files of 5 row groups each
        pq.write_table(table.slice(part * 2500, 2500), tmp_path / f"corpus-{part}.parquet", row_group_size=500)
    out = tmp_path / "vectors"
    process = beam_m2v_command(
        "embed",
        *("--input", str(tmp_path / "*.parquet"), "--output", str(out), "--model", MODEL),
        *("--progress-seconds", "0.02"),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    lines = [line for line in process.stderr.splitlines() if "beam_m2v.progress" in line]
    found = [ROWS_PROGRESS.search(line) for line in lines]
    assert len(lines) >= 2 and all(found), process.stderr[-3000:]
    done = [number(match.group(1)) for match in found if match]
    assert {number(match.group(2)) for match in found if match} == {5000}  # the total, from the footers
    assert done[0] == 0 and lines[0].endswith("(0.0%), starting")
    assert done == sorted(done) and done[-1] == 5000 and lines[-1].count("(100.0%)") == 1
    assert all(LOG_LINE.match(line) for line in process.stderr.splitlines()), process.stderr
    # The summary: once, on stdout, after the progress.
    assert [tuple(map(number, m)) for m in SUMMARY.findall(process.stdout)] == [(5000, 5000, 0)]
    assert not SUMMARY.search(process.stderr) and "apitools" not in process.stderr


def test_jsonl_progress_counts_bytes_of_plain_and_gzip_files(tmp_path: Path) -> None:
    lines = corpus_jsonl_lines(3000)
    plain, packed = b"".join(lines[:1000]), b"".join(lines[1000:])
    (tmp_path / "corpus-0.jsonl").write_bytes(plain)
    (tmp_path / "corpus-1.jsonl.gz").write_bytes(gzip.compress(packed))
    out = tmp_path / "vectors"
    process = beam_m2v_command(
        "embed",
        *("--input", str(tmp_path / "corpus-*"), "--input-format", "jsonl", "--output", str(out)),
        *("--model", MODEL, "--progress-seconds", "0.02"),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    found = [BYTES_PROGRESS.search(line) for line in process.stderr.splitlines() if "beam_m2v.progress" in line]
    assert len(found) >= 2 and all(found), process.stderr[-3000:]
    total = format_bytes(len(plain) + len(packed))  # uncompressed: the .gz trailer's size
    assert {match.group(2) for match in found if match} == {total}
    first, last = found[0], found[-1]
    assert first is not None and last is not None
    assert (first.group(1), first.group(3)) == ("0 B", "0")
    assert (last.group(1), last.group(3), last.group(4)) == (total, "3,000", "100.0")
    assert [tuple(map(number, m)) for m in SUMMARY.findall(process.stdout)] == [(3000, 3000, 0)]


def test_a_terminal_gets_a_live_bar_instead_of_lines(tmp_path: Path) -> None:
    out = tmp_path / "vectors"
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    with subprocess.Popen(
        [CONSOLE, "embed", "--input", "samples/linux-doc-sample.parquet", "--output", str(out), "--model", MODEL],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    ) as process:
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            shown += chunk
        summary = process.stdout.read() if process.stdout else ""
    os.close(controller)
    assert process.returncode == 0, shown.decode(errors="replace")[-3000:]
    text = shown.decode("utf-8", errors="replace")
    assert "100%|" in text and "2.00k/2.00k" in text and " rows" in text, text[-2000:]
    assert "beam_m2v.progress" not in text  # a bar, not log lines
    assert SUMMARY.findall(summary) == [("2,000", "2,000", "0")]


def test_gzip_trailer_size_and_formats(tmp_path: Path) -> None:
    data = b"x" * 100_000
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(data))
    assert gzip_recorded_size(str(path), path.stat().st_size) == len(data)
    path.write_bytes(b"too short")
    assert gzip_recorded_size(str(path), path.stat().st_size) is None
    assert [format_duration(s) for s in (0.4, 42, 185, 7620)] == ["0 s", "42 s", "3 min 05 s", "2 h 07 min"]
    assert [format_bytes(b) for b in (512, 3_400_000, 1_234_000_000)] == ["512 B", "3.4 MB", "1.2 GB"]


def test_model_arguments_set_the_model_options() -> None:
    """Each model argument of the programs sets the ``ModelOptions`` field it names."""
    from beam_m2v.model_options import OPTION_NAMES
    from pipelines.model_arguments import MODEL_ARGUMENTS, add_model_arguments, spec_from_arguments

    assert {argument.option for argument in MODEL_ARGUMENTS} <= set(OPTION_NAMES)
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    sha = "ab" * 32
    model_options = ["--tokenizer", "tok/", "--semantics", "seed", "--dimensionality", "8", "--raw-dim", "64"]
    args = parser.parse_args([*model_options, "--hf-revision", "v2", "--model-sha256", sha])
    spec = spec_from_arguments(MODEL, args)
    assert spec == beam_m2v.ModelSpec(
        MODEL,
        tokenizer="tok/",
        semantics="static_backend",
        dimensionality=8,
        raw_dim=64,
        revision="v2",
        sha256=sha,
    )
    assert spec_from_arguments(MODEL, parser.parse_args([])) == beam_m2v.ModelSpec(MODEL)


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "--input", "in.parquet", "--output", "out", "--batch-size", "many"],
        ["embed", "--input", "in.parquet"],
        ["reembed", "--input", "in.parquet", "--output", "out", "--previous", "p", "--progress-seconds", "soon"],
        ["show"],
        ["search", "out", "a query", "--k", "ten"],
        ["index", "vectors.lance", "--no-such-option"],
        ["no-such-command"],
    ],
    ids=["bad-value", "missing-option", "reembed-bad-value", "show-no-folder", "search", "index", "command"],
)
def test_a_bad_command_line_is_refused_in_one_line(argv, capsys, tmp_path, monkeypatch):
    """What is wrong and where the options are listed, in one line on stderr, exit 2 (not argparse's usage block)."""
    monkeypatch.chdir(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("beam-m2v") and "error: " in lines[0], captured.err
    assert "--help" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing was written
