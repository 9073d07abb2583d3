"""Memory of N worker processes on one machine that load the same model: does the matrix count once?

For N = 1, 2, 4 (``--counts``), N fresh processes each load the same model (a private copy of
the model folder in a temporary directory, so no other program on the machine shares its pages),
touch every page of the vocabulary matrix, and wait. While they wait, this script reads each
process's ``Pss`` and ``Rss`` from ``/proc/PID/smaps_rollup``, its private memory
(``Private_Clean + Private_Dirty``), and the ``Pss`` of the matrix file's mapping alone from
``/proc/PID/smaps``. It does the same with model2vec's ``StaticModel`` for contrast.

PSS splits each shared page among the processes that map it, so the sum of the N processes'
PSS is what they cost the machine together. With beam_m2v the matrix is a read-only memory map
of the file: the summed PSS of its mapping stays at about the matrix size whatever N is. With
model2vec each process holds its own copy on the heap (private memory).

    python bench/pss.py                      # ../shared/models/m2v-minilm-256, N = 1 2 4
    python bench/pss.py --model path/to/model --counts 1 2 4 8
    python bench/pss.py --smoke              # the bundled 64-dim model, N = 1 2: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_common import MIB, add_input_options, resolve_inputs, start_children  # bench/ is on sys.path as a script
from proc_memory import mapping_pss, smaps_rollup

CHILD = r"""
import os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
kind, model = sys.argv[1], sys.argv[2]
import numpy as np
if kind == "beam_m2v":
    import beam_m2v
    loaded = beam_m2v.load_model(model)
    matrix = loaded.matrix.embeddings
else:
    from model2vec import StaticModel
    loaded = StaticModel.from_pretrained(model)
    matrix = loaded.embedding
checksum = float(np.asarray(matrix, dtype=np.float64).sum())  # reads every page of the matrix
vector = loaded.encode(["a first text to make sure the model works"])
print("@ready", checksum, vector.shape, flush=True)
sys.stdin.readline()
"""


def measure(kind: str, model: Path, count: int, matrix_path: str) -> list[dict[str, int]]:
    """Start ``count`` processes; once all have loaded and touched the model, measure each."""
    children = start_children(CHILD, kind, str(model), count=count)
    try:
        checksums = set()
        for child in children:
            assert child.stdout is not None
            while True:
                text = child.stdout.readline()
                if not text:
                    raise RuntimeError(f"{kind} process {child.pid} exited before it was ready")
                if text.startswith("@ready"):
                    checksums.add(text.split()[1])
                    break
        if len(checksums) != 1:
            raise RuntimeError(f"{kind} processes saw different matrices: {checksums}")
        return [{**smaps_rollup(child.pid), "matrix_pss": mapping_pss(child.pid, matrix_path)} for child in children]
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
        for child in children:
            child.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_options(parser, corpus=False, repeats=None)
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=None,
        help="numbers of worker processes (default 1 2 4; 1 2 with --smoke)",
    )
    parser.add_argument("--libraries", nargs="+", default=["beam_m2v", "model2vec"], choices=["beam_m2v", "model2vec"])
    args = parser.parse_args(argv)
    resolve_inputs(args, parser)
    args.counts = args.counts or ([1, 2] if args.smoke else [1, 2, 4])

    with tempfile.TemporaryDirectory(prefix="beam-m2v-pss-") as scratch:
        private = Path(scratch) / args.model.name
        shutil.copytree(args.model, private)
        matrix_path = str(private / "model.safetensors")
        matrix_bytes = os.path.getsize(matrix_path)
        print(f"model: {args.model} (private copy in {scratch})")
        print(f"matrix file: model.safetensors, {matrix_bytes / MIB:.1f} MiB; {os.cpu_count()} CPUs")
        print("each process: load, touch every page of the matrix, encode one text, then wait while measured")
        print()
        header = (
            f"{'library':<10} {'N':>2} {'total PSS':>10} {'+PSS/extra proc':>16} {'matrix-map PSS':>15} "
            f"{'private/proc':>13} {'RSS/proc':>9}"
        )
        print(header)
        print(f"{'':<10} {'':>2} {'(MiB, sum)':>10} {'(MiB)':>16} {'(MiB, sum)':>15} {'(MiB)':>13} {'(MiB)':>9}")
        print("-" * len(header))
        for kind in args.libraries:
            first_total = None
            for count in args.counts:
                states = measure(kind, private, count, matrix_path)
                total = sum(state["pss"] for state in states)
                matrix = sum(state["matrix_pss"] for state in states)
                private_each = sum(state["private"] for state in states) / count
                rss_each = sum(state["rss"] for state in states) / count
                if first_total is None:
                    first_total, first_count = total, count
                    extra = "-"
                else:
                    extra = f"{(total - first_total) / (count - first_count) / MIB:.1f}"
                print(
                    f"{kind:<10} {count:>2} {total / MIB:>10.1f} {extra:>16} {matrix / MIB:>15.1f} "
                    f"{private_each / MIB:>13.1f} {rss_each / MIB:>9.1f}"
                )
        print()
        print("total PSS: sum over the N processes (what they cost the machine together);")
        print("+PSS/extra proc: (total PSS at N - total PSS at the first N) / (N - first N);")
        print("matrix-map PSS: PSS of the mappings of model.safetensors, summed over the N processes")
        print("(model2vec reads the file into its own heap, so it has no such mapping);")
        print("private/proc: Private_Clean + Private_Dirty, averaged over the N processes (with N = 1 the")
        print("matrix pages count as private too: no other process maps them yet).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
