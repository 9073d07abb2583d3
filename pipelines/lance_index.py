"""``beam-m2v index PATH.lance``: build a vector index (IVF_PQ, cosine) on a Lance dataset's embeddings.

``beam-m2v search`` then uses it, re-ranking its candidates with the exact vectors. Building
the index commits a new version of the dataset; its rows do not change. Rows appended later
(by ``reembed``) are searched exactly until the index is rebuilt (``--replace``).

Defaults: ``round(sqrt(rows))`` IVF partitions (at most one per 256 rows) and ``dim / 4`` PQ sub-vectors (4 dimensions
each), so that re-ranking ten candidates per hit finds the exact top 10 almost always.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence

from beam_m2v.errors import MissingDependencyError
from beam_m2v.transforms.lance_write import LanceTarget
from pipelines.arguments import program_parser
from pipelines.columns import EMBEDDING_COLUMN
from pipelines.process_exit import run_and_exit

#: Fewer rows than this cannot train a PQ codebook (256 centroids per sub-vector).
MIN_ROWS = 256
INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT")


def default_partitions(rows: int) -> int:
    """IVF partitions for ``rows`` vectors: about the square root, with at least 256 rows each to train on."""
    return max(1, min(round(math.sqrt(rows)), rows // MIN_ROWS))


def default_sub_vectors(dim: int) -> int:
    """PQ sub-vectors for ``dim`` dimensions: 4 dimensions each where ``dim`` allows, else whole dimensions."""
    for width in (4, 2, 1):
        if dim % width == 0:
            return dim // width
    return dim


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v index``."""
    parser = program_parser("beam-m2v index", __doc__.split("\n")[0], beam_options=False)
    parser.add_argument("dataset", help="a Lance dataset written by beam-m2v (PATH.lance)")
    parser.add_argument("--type", choices=INDEX_TYPES, default="IVF_PQ", help="index type (default IVF_PQ)")
    parser.add_argument(
        "--partitions", type=int, help="IVF partitions (default: about sqrt(rows), at least 256 rows each)"
    )
    parser.add_argument("--sub-vectors", type=int, help="PQ sub-vectors (default: dim / 4)")
    parser.add_argument("--replace", action="store_true", help="replace an existing index")
    args = parser.parse_args(argv)
    try:
        dataset = LanceTarget.of(args.dataset).open()
    except MissingDependencyError as error:
        print(f"beam-m2v index: error: {error}", file=sys.stderr)
        return 2
    if dataset is None or EMBEDDING_COLUMN not in dataset.schema.names:
        print(
            f"beam-m2v index: error: {args.dataset}: no Lance dataset with an {EMBEDDING_COLUMN!r} column",
            file=sys.stderr,
        )
        return 2
    rows = dataset.count_rows()
    if rows < MIN_ROWS:
        print(f"beam-m2v index: error: {args.dataset} has {rows} rows; an index needs {MIN_ROWS}", file=sys.stderr)
        return 2
    dim = dataset.schema.field(EMBEDDING_COLUMN).type.list_size
    options = {"num_partitions": args.partitions or default_partitions(rows)}
    if args.type == "IVF_PQ":
        options["num_sub_vectors"] = args.sub_vectors or default_sub_vectors(dim)
    logging.getLogger("pylance").setLevel(logging.WARNING)
    started = time.monotonic()
    try:
        dataset = dataset.create_index(EMBEDDING_COLUMN, args.type, metric="cosine", replace=args.replace, **options)
    except (ValueError, OSError) as error:
        print(f"beam-m2v index: error: {args.dataset}: {error}".splitlines()[0], file=sys.stderr)
        return 2
    settings = ", ".join(f"{name} {value}" for name, value in options.items())
    print(
        f"built a {args.type} index (cosine; {settings}) on {rows:,} vectors in {time.monotonic() - started:.1f} s; "
        f"{args.dataset} is at version {dataset.version}"
    )
    return 0


if __name__ == "__main__":
    run_and_exit(main)
