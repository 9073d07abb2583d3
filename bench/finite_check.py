"""What refusing NaN/inf matrices costs at load: ``load_model`` with and without the finite check, side by side.

Writes a model2vec folder with a large float32 matrix (1 GiB by default: 1,048,576 rows x 256,
the bundled model's tokenizer and config) into a temporary folder, then times, in one run:

* ``load_model`` as shipped (the finite check included), and with the check switched off,
  both with the matrix file in the page cache (warm: what every process after the first on a
  machine sees) and evicted from it with ``posix_fadvise(DONTNEED)`` (cold: the first process
  after a reboot or a fresh copy, which reads the whole file from disk);
* the check alone (``check_finite`` on the memory map), warm.

    python bench/finite_check.py                 # 1 GiB float32, 5 repeats
    python bench/finite_check.py --gib 0.25 --repeats 3
    python bench/finite_check.py --smoke         # a 29 MiB matrix, 1 repeat: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_common import REPO, loadavg, section

import beam_m2v
from beam_m2v import loading
from beam_m2v.matrix_files import map_safetensors
from beam_m2v.model_checks import check_finite

BUNDLED = REPO / "models" / "m2v-minilm-64"
DIM = 256


def smallest_rows() -> int:
    """Rows of the smallest matrix the bundled tokenizer accepts: one per token id."""
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(BUNDLED / "tokenizer.json")).get_vocab_size(with_added_tokens=True))


def write_large_model(folder: Path, gib: float | None) -> Path:
    """A model2vec folder whose float32 matrix has ``gib`` GiB (rows of DIM columns), written in chunks.

    ``gib=None``: the smallest matrix the tokenizer accepts (``smallest_rows``).
    """
    rows = smallest_rows() if gib is None else int(gib * (1 << 30)) // (DIM * 4)
    folder.mkdir(parents=True)
    header = json.dumps({"embeddings": {"dtype": "F32", "shape": [rows, DIM], "data_offsets": [0, rows * DIM * 4]}})
    padded = header.encode() + b" " * (-len(header) % 8)
    rng = np.random.default_rng(0)
    with open(folder / "model.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(padded)) + padded)
        for start in range(0, rows, 65536):
            handle.write(rng.standard_normal((min(65536, rows - start), DIM), dtype=np.float32).tobytes())
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(BUNDLED / name, folder / name)
    return folder / "model.safetensors"


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (only this file's, and only clean ones)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="matrix size in GiB (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of every contender (default 5)")
    parser.add_argument("--dir", default=None, help="where to write the model (default: a temporary folder)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="smoke run: the smallest matrix the bundled tokenizer accepts, one repeat (checks the script runs)",
    )
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.smoke else 5)

    workdir = Path(tempfile.mkdtemp(prefix="finite-check-", dir=args.dir))
    try:
        matrix = write_large_model(workdir / "model", None if args.smoke else args.gib)
        folder = matrix.parent
        size = matrix.stat().st_size
        print(f"model: {folder} ({size / (1 << 30):.2f} GiB float32 matrix, {size // (DIM * 4):,} x {DIM})")
        print(f"load average before: {loadavg()} (the machine is shared: figures vary between runs)")

        def load_checked() -> object:
            return beam_m2v.load_model(folder)

        def load_unchecked() -> object:
            original = loading.check_finite
            loading.check_finite = lambda *_: None  # type: ignore[assignment]
            try:
                return beam_m2v.load_model(folder)
            finally:
                loading.check_finite = original

        embeddings = map_safetensors(str(matrix))["embeddings"]
        contenders: list[tuple[str, Callable[[], object], bool]] = [
            ("load_model, no finite check, warm", load_unchecked, False),
            ("load_model, with finite check, warm", load_checked, False),
            ("finite check alone, warm", lambda: check_finite(str(matrix), "embeddings", embeddings), False),
            ("load_model, no finite check, cold", load_unchecked, True),
            ("load_model, with finite check, cold", load_checked, True),
        ]
        load_checked()  # warm the page cache and the imports
        times: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
        for repeat in range(args.repeats):
            for offset in range(len(contenders)):
                name, action, cold = contenders[(offset + repeat) % len(contenders)]
                if cold:
                    evict(matrix)
                else:
                    load_checked()
                times[name].append(timed(action))

        section(f"load time of a {size / (1 << 30):.2f} GiB matrix, median of {args.repeats} (min-max)")
        for name, values in times.items():
            median = statistics.median(values)
            rate = f"   {size / (1 << 30) / max(median, 1e-9):5.1f} GiB/s" if "with" in name or "alone" in name else ""
            print(f"{name:<40} {median * 1000:9.1f} ms   ({min(values) * 1000:.1f}-{max(values) * 1000:.1f}){rate}")
        print(f"\nload average after: {loadavg()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
