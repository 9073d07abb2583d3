"""The programs' command lines: help that shows every default, Beam's options passed through, typos named.

Arguments a program does not define are Beam pipeline options (``--runner``,
``--direct_num_workers``, Dataflow and Flink options). Two things make that mix safe to use:

* our own options may be spelled the Beam way, with underscores (``--id_column`` is ``--id-column``),
  so they are never mistaken for pipeline options;
* an argument that neither the program nor any Beam ``PipelineOptions`` class defines is named in a
  warning and left out, instead of being silently ignored by Beam.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import platform
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata
from typing import Any, NoReturn

logger = logging.getLogger("beam_m2v.arguments")

BEAM_OPTIONS_EPILOG = """\
Every other argument is an Apache Beam pipeline option, passed on to the runner. Examples:
  --direct_num_workers 2      run on two local workers
  --runner DataflowRunner     run on Google Cloud Dataflow (with --project, --region,
                              --temp_location gs://BUCKET/tmp and the other Dataflow options)
Without --runner the job runs on this machine, on Beam's FnApiRunner. beam-m2v's own options
may also be written with underscores (--id_column is --id-column)."""

_NO_DEFAULT: tuple[Any, ...] = (None, False, "", argparse.SUPPRESS)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: X)`` to every option that has one."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrap at spaces only: an option name such as ``--no-byte-stream-split`` stays whole."""
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action, argparse.BooleanOptionalAction):  # default: the option that is in effect
            chosen = action.option_strings[0 if action.default else 1]
            return text.replace(" (default: %(default)s)", "") + f" (default: {chosen})"
        if "%(default)" in text or not action.option_strings or any(action.default is v for v in _NO_DEFAULT):
            return text
        if isinstance(action.default, str) and not action.default:
            return text
        return f"{text} (default: %(default)s)"


def version_line() -> str:
    """``beam-m2v 0.1.0 (apache-beam 2.77.0, Python 3.11.7)``, without importing Beam."""

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    from beam_m2v import __version__

    return f"beam-m2v {__version__} (apache-beam {installed('apache-beam')}, Python {platform.python_version()})"


class ProgramParser(argparse.ArgumentParser):
    """An argument parser whose refusals are one line: what is wrong, and where the options are listed."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` on stderr and exit 2 (argparse adds its usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def program_parser(prog: str, description: str, *, beam_options: bool = True) -> argparse.ArgumentParser:
    """A parser with ``--version``, defaults in the help, one-line errors and, for pipelines, Beam's options."""
    parser = ProgramParser(
        prog=prog,
        description=description,
        epilog=BEAM_OPTIONS_EPILOG if beam_options else None,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # an abbreviation must never swallow a Beam option
    )
    parser.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    return parser


def our_spellings(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with our options' underscore spellings rewritten (``--id_column`` -> ``--id-column``)."""
    ours = {option for action in parser._actions for option in action.option_strings}
    rewritten = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if arg.startswith("--") and name not in ours and name.replace("_", "-") in ours:
            arg = f"{name.replace('_', '-')}{equals}{value}"
        rewritten.append(arg)
    return rewritten


def beam_option_parser() -> argparse.ArgumentParser:
    """A parser that knows every option of every Beam ``PipelineOptions`` class (as Beam builds it)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes: dict[str, type[PipelineOptions]] = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def unknown_arguments(beam_args: Sequence[str]) -> list[list[str]]:
    """The arguments Beam does not know either, each flag grouped with the values that follow it.

    Beam's options are those of the ``PipelineOptions`` classes imported so far: all of Beam's own,
    not those a third-party runner defines in its own module.
    """
    _, unknown = beam_option_parser().parse_known_args(list(beam_args))
    groups: list[list[str]] = []
    for arg in unknown:
        if arg.startswith("-") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


def parse_program_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """Our options and the Beam pipeline options; arguments neither knows are named in a warning.

    They stay in the pipeline options, where Beam ignores them (and Dataflow passes them on, unread).
    """
    args, beam_args = parser.parse_known_args(our_spellings(parser, sys.argv[1:] if argv is None else argv))
    unknown = unknown_arguments(beam_args)
    if unknown:
        known = [option for action in parser._actions for option in action.option_strings]
        known += [option for action in beam_option_parser()._actions for option in action.option_strings]
        for group in unknown:
            name = group[0].partition("=")[0]
            close = difflib.get_close_matches(name, known, n=1) if name.startswith("--") else []
            hint = f"; did you mean {close[0]}?" if close else ""
            logger.warning(
                "%s: %s is neither a beam-m2v option nor a Beam pipeline option: it has no effect%s",
                parser.prog,
                " ".join(group),
                hint,
            )
    return args, beam_args
