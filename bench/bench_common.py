"""What every benchmark script shares: inputs and their options, table printing, the load average, model children.

The scripts run as ``python bench/<name>.py``, so ``bench/`` is on ``sys.path`` and they import this
module by its bare name, as they import ``proc_memory``.

Every script takes the same input options (``add_input_options``): ``--corpus`` and ``--model``
(default: the corpus and 256-dim model of ``../shared``), ``--repeats``, and ``--smoke``: a run on
the bundled model and sample (or the ``--corpus`` / ``--model`` given), once, at the smallest
sizes that still run every contender, to check that the script works; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "linux-doc-6.1-paragraphs.parquet"
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "m2v-minilm-256"
SMOKE_CORPUS = REPO / "samples" / "linux-doc-sample.parquet"
SMOKE_MODEL = REPO / "models" / "m2v-minilm-64"
MIB = 1024 * 1024

SMOKE_HELP = (
    "smoke run: the bundled model and 2,000-paragraph sample unless --model / --corpus say otherwise, one "
    "repeat, the smallest sizes that still run every contender (checks that the script works; figures mean nothing)"
)


def add_input_options(parser: argparse.ArgumentParser, *, corpus: bool = True, repeats: int | None = 3) -> None:
    """``--corpus``, ``--model``, ``--repeats`` and ``--smoke``, the same in every script.

    ``corpus=False`` for a script that reads no corpus, ``repeats=None`` for one that repeats nothing;
    ``repeats`` is the default shown in the help (``resolve_inputs`` applies it).
    """
    if corpus:
        parser.add_argument(
            "--corpus",
            type=Path,
            default=None,
            help=f"Parquet file with id and text columns (default {DEFAULT_CORPUS})",
        )
    parser.add_argument("--model", type=Path, default=None, help=f"model2vec model folder (default {DEFAULT_MODEL})")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=None, help=f"runs of every contender (default {repeats})")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def resolve_inputs(args: argparse.Namespace, parser: argparse.ArgumentParser, *, repeats: int | None = None) -> None:
    """Fill in the defaults of ``add_input_options`` (``--smoke``: bundled inputs, one repeat); stop if one is missing.

    ``repeats`` is the default number of repeats without ``--smoke``; paths the user gave are kept.
    """
    if hasattr(args, "corpus") and args.corpus is None:
        args.corpus = SMOKE_CORPUS if args.smoke else DEFAULT_CORPUS
    if args.model is None:
        args.model = SMOKE_MODEL if args.smoke else DEFAULT_MODEL
    if hasattr(args, "repeats"):
        if args.repeats is None:
            args.repeats = 1 if args.smoke or repeats is None else repeats
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
    require_inputs(*(path for path in (getattr(args, "corpus", None), args.model) if path is not None))


def require_inputs(*paths: Path | str) -> None:
    """Exit (status 2) with one line when a corpus or model is missing (the defaults live in ../shared)."""
    for path in paths:
        if not Path(path).exists():
            print(
                f"bench: {path} does not exist: this benchmark reads the corpus and models of ../shared by default "
                "(pass --corpus / --model to use others, or --smoke for the bundled ones)",
                file=sys.stderr,
            )
            sys.exit(2)


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
