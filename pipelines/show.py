"""``beam-m2v show OUTPUT``: print a run's manifest summary and its first rows."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pyarrow.dataset as ds

from pipelines.arguments import program_parser
from pipelines.outputs import read_manifest
from pipelines.process_exit import exit_process

DESCRIPTION = """Print an output's row counts and model, and its first rows (id and the first vector components).

example: beam-m2v show vectors/"""


def parser() -> argparse.ArgumentParser:
    """The command line of ``beam-m2v show``."""
    show_parser = program_parser("beam-m2v show", DESCRIPTION, beam_options=False)
    show_parser.add_argument("output", metavar="OUTPUT", help="output folder of an embed or reembed run")
    show_parser.add_argument("--rows", type=int, default=5, metavar="N", help="how many rows to print")
    return show_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts, the model facts and ``--rows`` rows (id and the first vector components)."""
    args = parser().parse_args(argv)
    manifest = read_manifest(args.output)
    print(f"rows: {manifest['rows']}")
    print(
        f"model: {manifest['model_source']} (dim {manifest['dim']}, normalize {manifest['normalize']}, "
        f"fingerprint {manifest['model_fingerprint'][:12]})"
    )
    dataset = ds.dataset(args.output, format="parquet", ignore_prefixes=["failed", "changes", "manifest", ".", "_"])
    table = dataset.head(args.rows, columns=[dataset.schema.names[0], "embedding"])
    print(f"vectors: {dataset.count_rows():,} rows, schema {dataset.schema.field('embedding').type}")
    for row_id, vector in zip(table.column(0).to_pylist(), table.column("embedding").to_pylist(), strict=True):
        head = ", ".join(f"{x:+.4f}" for x in vector[:6])
        print(f"  {row_id!r:>8}  [{head}, ...]")
    return 0


if __name__ == "__main__":
    exit_process(main())
