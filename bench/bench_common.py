"""What every benchmark script shares: default inputs, table printing, the load average, model children.

The scripts run as ``python bench/<name>.py``, so ``bench/`` is on ``sys.path`` and they import this
module by its bare name, as they import ``proc_memory``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "linux-doc-6.1-paragraphs.parquet"
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "m2v-minilm-256"
MIB = 1024 * 1024


def require_inputs(*paths: Path | str) -> None:
    """Exit with one line when a corpus or model is missing (the defaults live in ../shared, beside the clone)."""
    for path in paths:
        if not Path(path).exists():
            sys.exit(
                f"bench: {path} does not exist: this benchmark reads the corpus and models of ../shared by default "
                "(pass --corpus / --model to use others)"
            )


def line(char: str = "-", width: int = 100) -> str:
    """A horizontal rule."""
    return char * width


def section(title: str, width: int = 100) -> None:
    """A blank line, the title, and a rule under it."""
    print()
    print(title)
    print(line(width=width))


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    with open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])


def start_children(source: str, *args: str, count: int) -> list[subprocess.Popen[str]]:
    """``count`` processes running ``python -c source args...``, the repository importable, stdin/stdout piped."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return [
        subprocess.Popen(
            [sys.executable, "-c", source, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(count)
    ]
