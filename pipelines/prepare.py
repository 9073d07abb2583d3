"""Preparing a run in the launcher: check the options and the input, load the model, fix the output schema.

Everything here happens before a pipeline is built, so a mistake (a bad option, an unreadable
input, a model that does not load, an input column with a reserved name) stops the program with
one line before any work. The model is loaded through the process cache: a pipeline that runs in
this process (FnApiRunner) reuses this load.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pyarrow as pa

from beam_m2v import StaticEmbedder
from beam_m2v.transforms.model_cache import ModelSpec, acquire_model
from pipelines.embed_arguments import check_numbers, model_spec_of
from pipelines.inputs import InputLayout, InputSpec, detect_format, inspect_input, match_files
from pipelines.model_facts import ModelFacts
from pipelines.outputs import output_schema


@dataclass(frozen=True)
class PreparedRun:
    """A run checked and resolved before its pipeline starts: what it reads, with which model, into what."""

    input: InputSpec
    """What to read and which columns matter."""
    files: list[str]
    """The input files the pattern matched."""
    layout: InputLayout
    """What the start-up checks found in the input: column types, rows."""
    model_spec: ModelSpec
    """The model, as the workers load it."""
    model: StaticEmbedder
    """The model, loaded in the launcher."""
    model_facts: ModelFacts
    """What identifies the vectors (written into the manifest and the output's metadata)."""
    output_schema: pa.Schema
    """The columns of the output: id, embedding, text hash and kept columns, with the model facts."""
    byte_stream_split: bool = True
    """Write vector values with Parquet's BYTE_STREAM_SPLIT encoding."""


def prepare(args: argparse.Namespace) -> PreparedRun:
    """Check the options and the input and load the model once in the launcher: mistakes fail before any work."""
    check_numbers(args)
    keep = tuple(column for column in args.keep_columns.split(",") if column)
    files = match_files(args.input)
    spec = InputSpec(
        pattern=args.input,
        format=detect_format(args.input, args.input_format),
        text_column=args.text_column,
        id_column=args.id_column or "id",
        keep_columns=keep,
        batch_size=args.batch_size,
    )
    spec, layout = inspect_input(files, spec, id_required=args.id_column is not None)
    model_spec = model_spec_of(args)
    model = acquire_model(model_spec).model
    facts = ModelFacts.of(model, model_spec)
    schema = output_schema(layout.schema, spec.id_column, keep, model.dim, facts.as_dict())
    return PreparedRun(
        input=spec,
        files=files,
        layout=layout,
        model_spec=model_spec,
        model=model,
        model_facts=facts,
        output_schema=schema,
        byte_stream_split=args.byte_stream_split,
    )
