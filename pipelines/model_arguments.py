"""The programs' model options: command-line arguments for fields of ``ModelOptions``, and the spec they make.

Each argument names the ``ModelOptions`` field it sets, so the programs, the library and the
transforms share one definition of what a model option is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import beam_m2v
from beam_m2v.model_options import DEFAULT_RAW_DIM
from beam_m2v.transforms.model_cache import ModelSpec
from pipelines.model_facts import semantics_name


@dataclass(frozen=True)
class ModelArgument:
    """One command-line argument that sets the ``ModelOptions`` field ``option``."""

    flag: str
    option: str
    help: str
    metavar: str | None = None
    type: Callable[[str], object] = str
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    """Other spellings of ``flag`` that are still accepted."""

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments (argparse's name for ``flag``)."""
        return self.flag.removeprefix("--").replace("-", "_")


MODEL_ARGUMENTS: tuple[ModelArgument, ...] = (
    ModelArgument(
        "--tokenizer",
        "tokenizer",
        "tokenizer file, folder or hub id, for a raw vocab_matrix.bin model without its own tokenizer.json",
        metavar="SOURCE",
    ),
    ModelArgument(
        "--semantics",
        "semantics",
        "which reference the vectors reproduce: model2vec's StaticModel.encode, or the Rust StaticBackend "
        "(static_backend; 'seed' is its old name) (default: static_backend for a raw vocab_matrix.bin model, "
        "model2vec otherwise)",
        type=semantics_name,
        choices=tuple(semantics.value for semantics in beam_m2v.Semantics),
    ),
    ModelArgument(
        "--dimensionality",
        "dimensionality",
        "keep only the first N dimensions of each vector (default: all of the model's)",
        metavar="N",
        type=int,
    ),
    ModelArgument(
        "--raw-dim",
        "raw_dim",
        f"number of columns of a raw vocab_matrix.bin model (default: {DEFAULT_RAW_DIM}; --dim is its old name)",
        metavar="N",
        type=int,
        aliases=("--dim",),
    ),
    ModelArgument(
        "--hf-revision",
        "revision",
        "Hugging Face hub revision: branch, tag or commit (default: main)",
        metavar="REVISION",
    ),
    ModelArgument(
        "--model-sha256",
        "sha256",
        "expected SHA-256 of the matrix file of a gs:// / s3:// model, checked when a machine copies it",
        metavar="HEX",
    ),
)
"""The model options the programs offer (a hub token comes from ``HF_TOKEN``, as for huggingface_hub)."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``MODEL_ARGUMENTS`` to ``parser`` (``--model`` itself is the program's)."""
    for argument in MODEL_ARGUMENTS:
        parser.add_argument(
            argument.flag,
            *argument.aliases,
            dest=argument.dest,
            type=argument.type,
            metavar=argument.metavar,
            choices=list(argument.choices) if argument.choices else None,
            help=argument.help,
        )


def spec_from_arguments(source: str, args: argparse.Namespace) -> ModelSpec:
    """The ``ModelSpec`` of ``source`` with the options parsed by ``add_model_arguments``."""
    options = {argument.option: getattr(args, argument.dest) for argument in MODEL_ARGUMENTS}
    return ModelSpec.from_keywords(source, options, caller="the command line")
