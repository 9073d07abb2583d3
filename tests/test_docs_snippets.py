"""Every ```python block of README.md and docs/*.md runs as written against the bundled model.

One subprocess per Markdown file (cwd: the repository root, ``HF_HUB_OFFLINE=1``, the repository on
``PYTHONPATH``) runs the file's blocks in order, each in a fresh namespace, so a block that relies on
an import or a name from another block fails. A block that cannot run here (it needs a cloud
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
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
for block in blocks:
    try:
        exec(compile(block["code"], f"{block['file']}:{block['line']}", "exec"), {"__name__": "__main__"})
    except BaseException:
        print(f"\n{block['file']}, block at line {block['line']} failed:\n", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
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


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_python_blocks_run(path: Path) -> None:
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip("no python blocks")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    payload = json.dumps([{"file": b.file, "line": b.line, "code": b.code} for b in blocks])
    process = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=payload,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    assert len(re.findall(r"^ran \S+:\d+$", process.stderr, re.MULTILINE)) == len(blocks), process.stderr[-3000:]


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
