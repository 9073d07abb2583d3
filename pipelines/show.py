"""``beam-m2v show OUTPUT``: print a run's manifest summary and its first rows."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pyarrow.dataset as ds

from pipelines.arguments import program_parser
from pipelines.columns import EMBEDDING_COLUMN
from pipelines.outputs import read_manifest, shard_paths
from pipelines.process_exit import run_and_exit

DESCRIPTION = """Print an output's row counts and model, and its first rows (id and the first vector components).

example: beam-m2v show vectors/"""


def parser() -> argparse.ArgumentParser:
    """The command line of ``beam-m2v show``."""
    show_parser = program_parser("beam-m2v show", DESCRIPTION, beam_options=False)
    show_parser.add_argument("output", metavar="OUTPUT", help="output folder of an embed or reembed run")
    show_parser.add_argument("--rows", type=int, default=5, metavar="N", help="how many rows to print")
    return show_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts, the model facts and ``--rows`` rows (id and the first vector components).

    Reads outputs of this version (``_manifest.json``) and of older ones (``manifest.json``).
    """
    args = parser().parse_args(argv)
    try:
        manifest = read_manifest(args.output)
    except (FileNotFoundError, ValueError) as error:
        print(f"beam-m2v show: error: {error}", file=sys.stderr)
        return 2
    print(f"rows: {manifest['rows']}")
    print(
        f"model: {manifest['model_source']} (dim {manifest['dim']}, normalize {manifest['normalize']}, "
        f"fingerprint {manifest['model_fingerprint'][:12]})"
    )
    files = shard_paths(args.output)
    if not files:
        print("vectors: no shards")
        return 0
    dataset = ds.dataset(files, format="parquet")
    table = dataset.head(max(args.rows, 0), columns=[dataset.schema.names[0], EMBEDDING_COLUMN])
    print(f"vectors: {dataset.count_rows():,} rows, schema {dataset.schema.field(EMBEDDING_COLUMN).type}")
    for row_id, vector in zip(table.column(0).to_pylist(), table.column(EMBEDDING_COLUMN).to_pylist(), strict=True):
        head = ", ".join(f"{x:+.4f}" for x in vector[:6])
        print(f"  {row_id!r:>8}  [{head}, ...]")
    return 0


if __name__ == "__main__":
    run_and_exit(main)
