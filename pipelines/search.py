"""``beam-m2v search TARGET "query text"``: the rows nearest to a query, by cosine similarity.

TARGET is a Lance dataset (``PATH.lance``, local or on an object store) or a Parquet output
folder of ``beam-m2v embed`` / ``reembed``. The query is embedded with the model recorded with
the output (its source, revision and settings), or ``--model``. The search is exact (every
vector scored) unless the Lance dataset has a vector index on ``embedding`` (``beam-m2v
index``), which is then used, its candidates re-ranked with the exact vectors
(``--refine-factor``). ``--exact`` always scores every vector.

Prints one line per hit, best first: rank, cosine score, id and the first kept text column
(``--show`` picks another; ``--show ''`` none); ``--json`` prints ``{"id": ..., "score": ...}``
per line instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

import beam_m2v
from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import MissingDependencyError, ModelLoadError
from pipelines.arguments import program_parser
from pipelines.columns import EMBEDDING_COLUMN, HASH_COLUMN
from pipelines.jsonl_lines import json_line
from pipelines.outputs import METADATA_KEY, has_manifest, read_manifest, shard_paths
from pipelines.process_exit import run_and_exit

#: Exact search reads the vectors this many rows at a time.
SCAN_ROWS = 65_536


class SearchError(ValueError):
    """The target, the model or an option cannot be used: one line for the user."""


@dataclass(frozen=True)
class Hit:
    """One result: the row's id, its cosine similarity to the query, and the shown column's value."""

    id: Any
    score: float
    shown: Any = None


@dataclass(frozen=True)
class Target:
    """A searchable output: its rows (a Lance dataset or a pyarrow dataset) and the model facts stored with it."""

    path: str
    rows: Any
    facts: dict[str, Any]
    lance: bool

    @property
    def schema(self) -> pa.Schema:
        """The output's columns."""
        return self.rows.schema

    @property
    def id_column(self) -> str:
        """The id column (the first column of every beam-m2v output)."""
        return str(self.schema.names[0])

    def has_index(self) -> bool:
        """Whether a Lance vector index covers the embedding column."""
        return self.lance and any(EMBEDDING_COLUMN in index["fields"] for index in self.rows.list_indices())


def is_lance_path(path: str) -> bool:
    """Whether ``path`` names a Lance dataset (by its ``.lance`` suffix)."""
    return path.rstrip("/").endswith(".lance")


def open_target(path: str, storage_options: dict[str, str] | None = None) -> Target:
    """Open a Lance dataset or a Parquet output folder, with its model facts."""
    if is_lance_path(path):
        from beam_m2v.transforms.lance_write import LanceTarget

        try:
            dataset = LanceTarget.of(path, storage_options).open()
        except MissingDependencyError as error:
            raise SearchError(str(error)) from None
        if dataset is None:
            raise SearchError(f"{path}: no Lance dataset there")
        metadata = dataset.schema.metadata or {}
        if METADATA_KEY not in metadata:
            raise SearchError(f"{path}: a Lance dataset without beam-m2v's model facts; pass --model to search it")
        return Target(path, dataset, json.loads(metadata[METADATA_KEY]), lance=True)
    if not has_manifest(path):
        raise SearchError(f"{path}: neither a Lance dataset (PATH.lance) nor a beam-m2v output folder (no manifest)")
    dataset = ds.dataset(shard_paths(path), format="parquet")
    return Target(path, dataset, read_manifest(path), lance=False)


def query_model(target: Target, model: str | None) -> StaticEmbedder:
    """The model that embeds the query: ``model``, or the one recorded with the output, checked against it."""
    facts = target.facts
    dim = int(target.schema.field(EMBEDDING_COLUMN).type.list_size)
    source = model or facts.get("model_source")
    if not source:
        raise SearchError(f"{target.path}: no model recorded with the output; pass --model")
    settings = {name: facts[name] for name in ("semantics", "normalize", "max_length") if name in facts}
    try:
        loaded = beam_m2v.load_model(source, revision=None if model else facts.get("model_revision"), **settings)
    except (ModelLoadError, OSError, ValueError) as error:
        raise SearchError(f"cannot load the model {source!r}: {error}") from None
    if model is None and loaded.dim > dim:  # the output was made with --dimensionality
        loaded = loaded.with_settings(dimensionality=dim)
    if loaded.dim != dim:
        raise SearchError(f"the model {source!r} makes {loaded.dim}-dim vectors; {target.path} holds {dim}-dim ones")
    if model is None and facts.get("model_fingerprint") not in (None, loaded.fingerprint):
        raise SearchError(
            f"the model at {source!r} is not the one that made {target.path}'s vectors (its content changed); "
            "pass --model to search with it anyway"
        )
    return loaded


def shown_column(target: Target, choice: str | None) -> str | None:
    """The column printed beside each hit: ``choice``, or the first kept string column."""
    if choice is not None:
        if choice and choice not in target.schema.names:
            raise SearchError(f"--show {choice!r}: no such column in {target.path} ({target.schema.names})")
        return choice or None
    skip = {target.id_column, EMBEDDING_COLUMN, HASH_COLUMN}
    for field in target.schema:
        if field.name not in skip and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            return str(field.name)
    return None


def cosine_scores(vectors: pa.Array, query: np.ndarray) -> np.ndarray:
    """Cosine similarity (float64) of each vector of a ``fixed_size_list<float32>`` array to ``query``."""
    dim = vectors.type.list_size
    matrix = np.asarray(vectors.flatten(), dtype=np.float64).reshape(len(vectors), dim)
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
    scores: np.ndarray = np.divide(matrix @ query, norms, out=np.zeros(len(matrix)), where=norms > 0)
    return scores


def exact_search(batches: Iterable[pa.RecordBatch], id_column: str, query: np.ndarray, k: int) -> list[Hit]:
    """The ``k`` rows with the highest cosine similarity, scanning every vector; ties keep the scan order."""
    query = np.asarray(query, dtype=np.float64)
    best_scores = np.zeros(0)
    best_order = np.zeros(0, dtype=np.int64)
    best_ids: list[Any] = []
    seen = 0
    for batch in batches:
        vectors = batch.column(EMBEDDING_COLUMN)
        valid = vectors.is_valid().to_numpy(zero_copy_only=False)
        scores = np.full(len(batch), -np.inf)
        if valid.any():
            scores[valid] = cosine_scores(vectors.filter(pa.array(valid)), query)
        order = np.arange(seen, seen + len(batch))
        seen += len(batch)
        all_scores = np.concatenate([best_scores, scores])
        all_order = np.concatenate([best_order, order])
        all_ids = best_ids + batch.column(id_column).to_pylist()
        keep = np.lexsort((all_order, -all_scores))[:k]
        keep = keep[np.isfinite(all_scores[keep])]
        best_scores, best_order = all_scores[keep], all_order[keep]
        best_ids = [all_ids[i] for i in keep]
    return [Hit(row_id, float(score)) for row_id, score in zip(best_ids, best_scores, strict=True)]


def index_search(target: Target, query: np.ndarray, k: int, nprobes: int | None, refine_factor: int) -> list[Hit]:
    """The ``k`` nearest rows through the dataset's vector index (cosine), re-ranked with the exact vectors."""
    nearest: dict[str, Any] = {"column": EMBEDDING_COLUMN, "q": query.astype(np.float32), "k": k}
    if refine_factor > 1:
        nearest["refine_factor"] = refine_factor
    if nprobes:
        nearest["nprobes"] = nprobes
    table = target.rows.to_table(columns=[target.id_column, "_distance"], nearest=nearest)
    distances = table.column("_distance").to_numpy(zero_copy_only=False).astype(np.float64)
    return [
        Hit(row_id, 1.0 - distance)
        for row_id, distance in zip(table.column(target.id_column).to_pylist(), distances, strict=True)
    ]


def with_shown(target: Target, hits: list[Hit], column: str | None) -> list[Hit]:
    """The hits with the value of ``column`` of their rows."""
    if column is None or not hits:
        return hits
    ids = pa.array([hit.id for hit in hits], target.schema.field(target.id_column).type)
    table = target.rows.to_table(
        columns=[target.id_column, column], filter=pc.field(target.id_column).isin(ids.to_pylist())
    )
    values = dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    return [Hit(hit.id, hit.score, values.get(hit.id)) for hit in hits]


def search(
    target: Target,
    model: StaticEmbedder,
    text: str,
    *,
    k: int = 10,
    exact: bool = False,
    nprobes: int | None = None,
    refine_factor: int = 10,
) -> tuple[list[Hit], str]:
    """The ``k`` best hits for ``text`` and how they were found (``exact`` or ``index``).

    A query whose vector is zero (no token the model knows, or an empty text) raises SearchError.
    """
    query = model.encode([text])[0].astype(np.float64)
    if not query.any():
        raise SearchError(
            f"the query {text[:80]!r} has no token the model knows: its vector is zero, so it is equally far "
            "from every row"
        )
    if not exact and target.has_index():
        return index_search(target, query, k, nprobes, refine_factor), "index"
    batches = target.rows.to_batches(columns=[target.id_column, EMBEDDING_COLUMN], batch_size=SCAN_ROWS)
    return exact_search(batches, target.id_column, query, k), "exact"


def _json_id(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def print_hits(hits: Sequence[Hit], as_json: bool) -> None:
    """Rank, score, id and shown value per line; or one JSON object per line."""
    for rank, hit in enumerate(hits, start=1):
        if as_json:
            print(json_line({"id": _json_id(hit.id), "score": round(hit.score, 6)}))
            continue
        shown = "" if hit.shown is None else "  " + " ".join(str(hit.shown).split())[:120]
        print(f"{rank:>3}  {hit.score:.4f}  {hit.id!s}{shown}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v search``."""
    parser = program_parser("beam-m2v search", __doc__.split("\n")[0], beam_options=False)
    parser.add_argument("target", help="a Lance dataset (PATH.lance) or a Parquet output folder")
    parser.add_argument("query", help="the query text")
    parser.add_argument("--k", type=int, default=10, help="hits to return (default 10)")
    parser.add_argument("--json", action="store_true", help='one {"id": ..., "score": ...} object per line')
    parser.add_argument("--model", help="model for the query (default: the one recorded with the output)")
    parser.add_argument("--exact", action="store_true", help="score every vector even if an index exists")
    parser.add_argument("--show", help="column printed beside each hit (default: the first kept text column)")
    parser.add_argument("--nprobes", type=int, help="index partitions searched (default: Lance's)")
    parser.add_argument("--refine-factor", type=int, default=10, help="index candidates re-ranked exactly, per hit")
    args = parser.parse_args(argv)
    try:
        if args.k < 1:
            raise SearchError(f"--k must be at least 1, not {args.k}")
        target = open_target(args.target)
        model = query_model(target, args.model)
        column = shown_column(target, args.show)
        hits, how = search(
            target,
            model,
            args.query,
            k=args.k,
            exact=args.exact,
            nprobes=args.nprobes,
            refine_factor=args.refine_factor,
        )
    except SearchError as error:
        print(f"beam-m2v search: error: {error}", file=sys.stderr)
        return 2
    print_hits(with_shown(target, hits, None if args.json else column), args.json)
    print(f"{len(hits)} hits ({how} search, cosine similarity)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
