"""How far apart the static_backend (Rust ``StaticBackend``) and the model2vec semantics put the same texts.

Builds the StaticBackend's raw format from a model2vec folder (the shared 256-dim model by default):
its ``embeddings`` tensor written as ``vocab_matrix.bin``, float32 little-endian, next to its
``tokenizer.json``, in a temporary folder. Then it
loads it in both semantics, embeds the whole corpus with each, and prints per-text cosine
statistics between the two, how many texts differ, and the two causes of differences that matter
on this corpus: texts longer than 512 tokens and texts containing [UNK].

model2vec semantics is loaded with ``normalize=True`` (what the original folder's config says; the raw
format has no config, so it would otherwise default to False). Cosines do not depend on that choice.

Run from the repository root::

    python bench/semantics.py
    python bench/semantics.py --limit 20000 --model path/to/model2vec/folder --corpus other.parquet
    python bench/semantics.py --smoke     # the bundled 64-dim model and sample: checks the script runs
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
import pyarrow.parquet as pq
from bench_common import add_input_options, resolve_inputs
from safetensors.numpy import load_file
from tokenizers import Tokenizer

import beam_m2v
from beam_m2v.tokenization import median_token_length, unknown_token_id

MAX_TOKENS = 512


def build_raw_model(model: Path, folder: Path) -> tuple[Path, int]:
    """Write ``model``'s embeddings as the StaticBackend's ``vocab_matrix.bin`` beside its ``tokenizer.json``.

    Returns the folder and the matrix's columns (the raw format does not record them).
    """
    embeddings = load_file(str(model / "model.safetensors"))["embeddings"]
    embeddings.astype("<f4").tofile(folder / "vocab_matrix.bin")
    shutil.copyfile(model / "tokenizer.json", folder / "tokenizer.json")
    return folder, int(embeddings.shape[1])


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Per-row cosine; rows zero in both count as 1, zero in one only as 0. Also those two counts."""
    norm_a, norm_b = np.linalg.norm(a, axis=1).astype(np.float64), np.linalg.norm(b, axis=1).astype(np.float64)
    dots = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
    both_zero = (norm_a == 0) & (norm_b == 0)
    one_zero = (norm_a == 0) ^ (norm_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dots / (norm_a * norm_b)
    cos[both_zero], cos[one_zero] = 1.0, 0.0
    return cos, int(both_zero.sum()), int(one_zero.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_input_options(parser, repeats=None)
    parser.add_argument("--limit", type=int, default=None, help="only the first N texts")
    args = parser.parse_args(argv)
    resolve_inputs(args, parser)

    texts = pq.read_table(args.corpus, columns=["text"]).column("text").to_pylist()[: args.limit]
    with tempfile.TemporaryDirectory(prefix="beam-m2v-semantics-") as tmp:
        raw, dim = build_raw_model(args.model, Path(tmp))
        backend = beam_m2v.load_model(raw, raw_dim=dim)
        model2vec = beam_m2v.load_model(raw, semantics="model2vec", normalize=True, raw_dim=dim)
        started = time.perf_counter()
        backend_vectors = backend.encode(texts)
        backend_seconds = time.perf_counter() - started
        started = time.perf_counter()
        model2vec_vectors = model2vec.encode(texts)
        model2vec_seconds = time.perf_counter() - started
        backend_ids, model2vec_ids = backend.text_to_ids.of_texts(texts), model2vec.text_to_ids.of_texts(texts)

        tokenizer = Tokenizer.from_file(str(raw / "tokenizer.json"))
        file_truncation = tokenizer.truncation
        unk_id = unknown_token_id(tokenizer)
        char_limit = MAX_TOKENS * median_token_length(tokenizer)
        tokenizer.no_truncation()
        full = [encoding.ids for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    lengths = np.fromiter(map(len, full), dtype=np.int64, count=len(full))
    has_unk = np.fromiter((unk_id in ids for ids in full), dtype=bool, count=len(full))
    unk_in_budget = np.fromiter((unk_id in ids[:MAX_TOKENS] for ids in full), dtype=bool, count=len(full))
    char_cut = np.fromiter((len(text) > char_limit for text in texts), dtype=bool, count=len(texts))
    same_ids = np.fromiter(
        (
            np.array_equal(
                backend_ids.ids[backend_ids.offsets[i] : backend_ids.offsets[i + 1]],
                model2vec_ids.ids[model2vec_ids.offsets[i] : model2vec_ids.offsets[i + 1]],
            )
            for i in range(len(texts))
        ),
        dtype=bool,
        count=len(texts),
    )
    cos, both_zero, one_zero = cosines(backend_vectors, model2vec_vectors)
    differ_bits = (backend_vectors != model2vec_vectors).any(axis=1)
    max_diff = np.abs(backend_vectors - model2vec_vectors).max(axis=1)

    n = len(texts)
    print(f"corpus: {args.corpus.name}, {n:,} texts; model: raw format of {args.model.name} (dim {backend.dim})")
    print(f"tokenizer file truncation: {file_truncation}")
    print(f"static_backend encode {backend_seconds:.1f} s, model2vec-semantics encode {model2vec_seconds:.1f} s")
    print()
    print("cosine(static_backend vector, model2vec-semantics vector) per text:")
    print(f"  mean    {cos.mean():.9f}")
    print(f"  median  {np.median(cos):.9f}")
    print(f"  min     {cos.min():.9f}")
    print(f"  p1      {np.percentile(cos, 1):.9f}")
    print(f"  texts zero in both: {both_zero:,}; zero in one only (cosine counted as 0): {one_zero:,}")
    print()
    print("texts that differ:")
    print(f"  at all (any bit of any component)      {int(differ_bits.sum()):>7,}  ({differ_bits.mean():.2%})")
    print(f"  by more than 1e-6 in some component    {int((max_diff > 1e-6).sum()):>7,}")
    print(f"  pooled a different list of token ids   {int((~same_ids).sum()):>7,}")
    print(
        f"  cosine < 0.9999 / < 0.99 / < 0.9       {int((cos < 0.9999).sum()):,} / {int((cos < 0.99).sum()):,} / "
        f"{int((cos < 0.9).sum()):,}"
    )
    print()
    print("causes:")
    print(f"  longer than {MAX_TOKENS} tokens (untruncated)       {int((lengths > MAX_TOKENS).sum()):>7,}")
    print(f"  containing [UNK] (id {unk_id})                  {int(has_unk.sum()):>7,}")
    print(f"  containing [UNK] within first {MAX_TOKENS} tokens    {int(unk_in_budget.sum()):>7,}")
    print(f"  longer than {char_limit} chars (model2vec cuts)   {int(char_cut.sum()):>7,}")
    explained = has_unk | (lengths > MAX_TOKENS) | char_cut
    print(f"  different ids not explained by those       {int((~same_ids & ~explained).sum()):>7,}")
    print(
        f"  max |diff| where ids are the same          {float(max_diff[same_ids].max()) if same_ids.any() else 0.0:.3g}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
