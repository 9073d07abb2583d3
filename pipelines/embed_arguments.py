"""The command-line options of the programs that embed a corpus (``embed``, ``reembed``), and their checks.

``add_embed_arguments`` defines the input, output, model and run options; the model options are
defined in ``add_model_arguments`` and turned into a ``ModelSpec`` by ``model_spec_of`` (the one place
that knows both). ``check_numbers`` refuses a number that must be positive. Publishing options
(``--max-failed-fraction``) are ``pipelines.outputs.add_output_arguments``'s.
"""

from __future__ import annotations

import argparse

from beam_m2v.transforms.model_cache import ModelSpec
from beam_m2v.transforms.thread_options import threads_option
from pipelines import model_arguments
from pipelines.input_error import InputError
from pipelines.inputs import JSONL_ROWS_PER_TABLE
from pipelines.progress import DEFAULT_INTERVAL

DEFAULT_MODEL = "minishlab/potion-base-8M"
#: Options that must be positive whole numbers when given: parsed name -> the spellings named in the refusal.
POSITIVE_OPTIONS = {"dimensionality": "--dimensionality", "raw_dim": "--raw-dim/--dim", "batch_size": "--batch-size"}


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """Input, output, model and run options shared by ``embed`` and ``reembed``."""
    parser.add_argument(
        "--input",
        required=True,
        metavar="PATTERN",
        help="the corpus: a file pattern of Parquet (.parquet) or JSON Lines (.jsonl, .jsonl.gz) files, local or on "
        "gs:// / s3://; quote it so that the shell does not expand it",
    )
    parser.add_argument(
        "--input-format",
        choices=["parquet", "jsonl"],
        help="format of the input files (default: from the file extension)",
    )
    parser.add_argument(
        "--text-column", default="text", metavar="NAME", help="column (Parquet) or field (JSONL) with the text to embed"
    )
    parser.add_argument(
        "--id-column",
        metavar="NAME",
        help="column or field with each row's id, copied to the output (default: id; when the input has no such "
        "column, each row's id is its position '<file>:<line or row>')",
    )
    parser.add_argument(
        "--keep-columns",
        default="",
        metavar="A,B",
        help="comma-separated input columns copied to the output beside each vector (default: none)",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="FOLDER",
        help="output folder (local, gs:// or s3://), or a Lance dataset PATH.lance: vector shards, dead letters and a "
        "manifest; it must be absent, empty or a previous beam-m2v output, and is replaced as a whole when the run "
        "succeeds",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=JSONL_ROWS_PER_TABLE,
        metavar="N",
        help="most rows per table: each table is one encoder call and one Parquet row group of the output "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--byte-stream-split",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write vector values with Parquet's BYTE_STREAM_SPLIT encoding (about 10%% smaller; readers need "
        "Parquet 2.8+ support: pyarrow, DuckDB, Polars, Spark 3.2+); --no-byte-stream-split writes plain pages",
    )
    parser.add_argument(
        "--progress-seconds",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="S",
        help="seconds between progress lines on stderr (a live bar instead when stderr is a terminal); 0 for none",
    )
    parser.add_argument(
        "--m2v_threads_per_worker",
        type=threads_option,
        metavar="N",
        help="cores each worker process uses to embed, or 'all' (default: its share of the machine when the "
        "runner starts several worker processes, every core otherwise; also BEAM_M2V_THREADS)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and the model options of ``pipelines.model_arguments`` (read back by ``model_spec_of``)."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="SOURCE",
        help="the model: a local folder, a Hugging Face hub id, hf://owner/name/file, or a gs:// / s3:// folder",
    )
    model_arguments.add_model_arguments(parser)


def model_spec_of(args: argparse.Namespace) -> ModelSpec:
    """The model the options of ``add_model_arguments`` name."""
    return model_arguments.spec_from_arguments(args.model, args)


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse a numeric option that is zero or negative (``InputError``, one line)."""
    for name, flags in POSITIVE_OPTIONS.items():
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise InputError(f"{flags} must be a positive whole number, got {value}")
