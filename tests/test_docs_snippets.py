"""Every ```python block of README.md and docs/*.md runs as written against the bundled model.

One subprocess (cwd: a folder showing the repository's ``models/`` and ``samples/``,
``HF_HUB_OFFLINE=1``, the repository on ``PYTHONPATH``)
runs every file's blocks in order, each in a fresh namespace, so a block that relies on an import or
a name from another block fails; after a failure the rest of that file's blocks are not run, and
each file is reported by its own test. A block that cannot run here (it needs a cloud
bucket, a cluster or Airflow) is marked by an HTML comment on the line just before its fence::

    <!-- not run: needs a gs:// bucket and a Google Cloud project -->
    ```python

The reason must be given, and the text around the block should say it too (the comment does not
render). Keep that set small: ``test_few_blocks_are_not_run`` lists the ones allowed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->\s*$")
#: Blocks allowed not to run: (file, first line of the block), each with a reason in its comment.
ALLOWED_NOT_RUN = {
    ("docs/programs.md", "from airflow.operators.bash import BashOperator"),
    (
        "docs/scaling.md",
        '"""Embed a Parquet corpus on gs:// (or s3://) into Parquet vectors on the same filesystem."""',
    ),
}

RUNNER = r"""
import json, os, sys, traceback
blocks = json.loads(sys.stdin.read())
failed = set()
for block in blocks:
    if block["file"] in failed:
        continue
    try:
        exec(compile(block["code"], f"{block['file']}:{block['line']}", "exec"), {"__name__": "__main__"})
    except BaseException:
        failed.add(block["file"])
        print(f"\n{block['file']}, block at line {block['line']} failed:\n", file=sys.stderr)
        traceback.print_exc()
        continue
    finally:
        os.chdir(sys.argv[1])
    print(f"ran {block['file']}:{block['line']}", file=sys.stderr)
"""


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    file: str
    line: int
    language: str
    code: str
    not_run: str | None


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the ``not run`` reason of the line before each."""
    name = path.relative_to(REPO).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"{name}:{index + 1}: unclosed code block"
        previous = NOT_RUN.match(lines[index - 1]) if index else None
        code = "\n".join(lines[index + 1 : end]) + "\n"
        blocks.append(Block(name, index + 2, opening.group(1), code, previous.group(1) if previous else None))
        index = end + 1
    return blocks


def python_blocks(path: Path) -> list[Block]:
    return [block for block in blocks_of(path) if block.language == "python" and block.not_run is None]


@pytest.fixture(scope="module")
def snippet_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """Every file's blocks, in one process: Python and Beam start once, not once per Markdown file.

    They run in a folder of their own that shows the repository's ``models/`` and ``samples/``, so
    what they write (``vectors/``, datasets) stays out of the repository, and two test workers that
    both run this fixture do not write the same files.
    """
    folder = tmp_path_factory.mktemp("docs")
    for name in ("models", "samples"):
        (folder / name).symlink_to(REPO / name, target_is_directory=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    blocks = [block for path in markdown_files() for block in python_blocks(path)]
    payload = json.dumps([{"file": b.file, "line": b.line, "code": b.code} for b in blocks])
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(folder)],
        input=payload,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def failure_of(stderr: str, name: str) -> str:
    """The traceback printed for ``name``'s failed block, if any."""
    start = stderr.find(f"\n{name}, block at line ")
    if start == -1:
        return ""
    end = stderr.find("\nran ", start)
    return stderr[start : end if end != -1 else len(stderr)][-5000:]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_python_blocks_run(path: Path, snippet_run: subprocess.CompletedProcess[str]) -> None:
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip("no python blocks")
    name = path.relative_to(REPO).as_posix()
    assert snippet_run.returncode == 0, snippet_run.stderr[-3000:]
    assert not failure_of(snippet_run.stderr, name), failure_of(snippet_run.stderr, name)
    ran = re.findall(rf"^ran {re.escape(name)}:\d+$", snippet_run.stderr, re.MULTILINE)
    assert len(ran) == len(blocks), snippet_run.stderr[-3000:]


def test_the_readme_shows_runnable_python() -> None:
    readme = python_blocks(REPO / "README.md")
    assert len(readme) >= 3
    code = "".join(block.code for block in readme)
    assert "with_exception_handling()" in code and ".failed_inferences" in code


def test_few_blocks_are_not_run() -> None:
    skipped = {
        (block.file, block.code.splitlines()[0]): block.not_run
        for path in markdown_files()
        for block in blocks_of(path)
        if block.not_run is not None
    }
    for where, reason in skipped.items():
        assert reason and len(reason) > 10, f"{where}: say why it is not run"
    assert set(skipped) <= ALLOWED_NOT_RUN, sorted(set(skipped) - ALLOWED_NOT_RUN)
