"""The ``beam-m2v`` console command: ``embed``, ``reembed``, ``show``, ``search`` and ``index``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pipelines.process_exit import run_and_exit

USAGE = """usage: beam-m2v {embed,reembed,show,search,index} [options]
       beam-m2v --version

  embed     embed a Parquet or JSONL corpus into Parquet vector shards (or a Lance dataset: --output PATH.lance)
  reembed   re-embed a changed corpus, reusing the previous run's vectors
  show      print a run's counts, model and first rows
  search    the rows nearest to a query text, in a Lance dataset or a Parquet output
  index     build a vector index on a Lance dataset

'beam-m2v COMMAND --help' lists a command's options and their defaults."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the pipeline named by the first argument."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "--version" or (command in {"embed", "reembed", "show", "search", "index"} and "--version" in rest):
        from pipelines.arguments import version_line

        print(version_line())  # without importing Beam
        return 0
    os.environ.setdefault("LANCE_LOG", "error")  # Lance's own warnings would repeat what the commands report
    if command in ("embed", "reembed"):
        from pipelines import lance_output

        if lance_output.lance_output(rest):
            return lance_output.embed_main(rest) if command == "embed" else lance_output.reembed_main(rest)
    if command == "embed":
        from pipelines import embed

        return embed.main(rest)
    if command == "reembed":
        from pipelines import reembed

        return reembed.main(rest)
    if command == "show":
        from pipelines import show

        return show.main(rest)
    if command == "search":
        from pipelines import search

        return search.main(rest)
    if command == "index":
        from pipelines import lance_index

        return lance_index.main(rest)
    print(
        f"beam-m2v: error: unknown command {command!r}; the commands are embed, reembed, show, search and index "
        "(see beam-m2v --help)",
        file=sys.stderr,
    )
    return 2


def entry_point() -> NoReturn:
    """The installed ``beam-m2v`` script: run ``main`` on the command line's arguments and exit without teardown."""
    run_and_exit(main)


if __name__ == "__main__":
    entry_point()
