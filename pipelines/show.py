"""``beam-m2v show OUTPUT``: print a run's manifest summary and its first rows."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pyarrow.dataset as ds

from pipelines.outputs import EMBEDDING_COLUMN, read_manifest, shard_paths
from pipelines.process_exit import exit_process


def main(argv: Sequence[str] | None = None) -> int:
    """Print the counts, the model facts and ``--rows`` rows (id and the first vector components).

    Reads outputs of this version (``_manifest.json``) and of older ones (``manifest.json``).
    """
    parser = argparse.ArgumentParser(prog="beam-m2v show", description=__doc__.split("\n")[0])
    parser.add_argument("output", help="output folder of an embed or reembed run")
    parser.add_argument("--rows", type=int, default=5, help="rows to print (default 5)")
    args = parser.parse_args(argv)
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
    exit_process(main())
