"""``beam-m2v show OUTPUT``: print a run's manifest summary and its first rows."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pyarrow.dataset as ds

from pipelines.outputs import read_manifest
from pipelines.process_exit import exit_process


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts, the model facts and ``--rows`` rows (id and the first vector components)."""
    parser = argparse.ArgumentParser(prog="beam-m2v show", description=__doc__.split("\n")[0])
    parser.add_argument("output", help="output directory of an embed or reembed run")
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args(argv)
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
