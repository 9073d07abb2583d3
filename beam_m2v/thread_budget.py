"""How many cores this process may use to embed, and the encode pool and tokenizer sized to that.

A Beam runner often starts several SDK worker processes on one machine (Dataflow one per vCPU,
Flink ``--sdk_worker_parallelism`` per task manager, FnApiRunner ``--direct_num_workers`` with
``multi_processing``). A process that sizes its encode pool and the tokenizer's Rayon pool to
every core of the machine then competes with its siblings for the same cores. Each process
therefore works out its budget once, the first setting that applies:

1. the pipeline option ``--m2v_threads_per_worker`` (a number, or ``all``);
2. the environment variable ``BEAM_M2V_THREADS`` (the same values);
3. in an SDK worker process, the cores of the machine shared among the worker processes on it,
   as ``BEAM_M2V_WORKER_PROCESSES`` or the runner's pipeline options tell
   (``no_use_multiple_sdk_containers``: one process; Dataflow: one per vCPU;
   ``--sdk_worker_parallelism=N``: N);
4. in an SDK worker process nothing tells how many share the machine: one core, the usual
   layout being one worker process per core;
5. any other process (a local run in one process, a plain Python program): every core, pools
   sized exactly as without a budget.

``all`` means every core in every process: the sizing without a budget. The budget is fixed
at its first use, before this package's first tokenizer call in the process: the tokenizer reads
``RAYON_NUM_THREADS`` when its global pool starts and ``TOKENIZERS_PARALLELISM`` at every call.
Either variable, when already set in the environment, is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

logger = logging.getLogger(__name__)

#: The pipeline option (Beam's ``--m2v_threads_per_worker``) holding an explicit budget.
OPTION = "m2v_threads_per_worker"
#: Environment variable with an explicit budget for the processes that see it.
ENV_THREADS = "BEAM_M2V_THREADS"
#: Environment variable telling an SDK worker process how many worker processes share its machine.
ENV_WORKER_PROCESSES = "BEAM_M2V_WORKER_PROCESSES"
#: The value meaning every core in every process (no budget).
ALL = "all"

_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"


class ThreadBudgetError(ValueError):
    """A thread setting that is neither a positive number nor ``all``."""


def parse_threads(value: object, name: str) -> int | None:
    """A thread setting as a number of cores, or None for ``all``; ThreadBudgetError otherwise."""
    text = str(value).strip().lower()
    if text == ALL:
        return None
    return parse_count(value, name)


def parse_count(value: object, name: str) -> int:
    """A positive whole number given as ``name``; ThreadBudgetError otherwise."""
    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if count < 1:
        raise ThreadBudgetError(f"{name}={value!r} is not a positive number of threads or '{ALL}'")
    return count


@dataclass(frozen=True)
class ThreadBudget:
    """The cores one process may use, and which setting decided it."""

    threads: int | None
    """Cores for this process; None means every core, with the pools sized as without a budget."""
    reason: str

    @property
    def encode_threads(self) -> int:
        """Threads of the process's encode pool."""
        return max(2, os.cpu_count() or 2) if self.threads is None else self.threads

    def describe(self) -> str:
        """One line for the log."""
        cores = "every core" if self.threads is None else f"{self.threads} core{'s' if self.threads > 1 else ''}"
        return f"{cores} for this process ({self.reason})"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def is_sdk_worker_process(argv: Sequence[str] | None = None) -> bool:
    """Whether this process is a Beam SDK worker a runner started, judged by its command line.

    Runner containers and FnApiRunner's multi_processing run ``python -m
    apache_beam.runners.worker.sdk_worker_main``; Beam's Python worker pool runs
    ``python -c "... SdkHarness(...).run()"``.
    """
    args = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    if _WORKER_MAIN in args:
        return True
    if argv is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if getattr(spec, "name", None) == _WORKER_MAIN:
            return True
    return "-c" in args and any("SdkHarness(" in arg for arg in args)


def _experiments(value: object) -> set[str]:
    """Beam's ``--experiments`` as a set, from a list or a comma-separated string."""
    items = value if isinstance(value, (list, tuple)) else [value] if value else []
    return {part.strip() for item in items for part in str(item).split(",") if part.strip()}


def worker_processes(options: Mapping[str, Any], environ: Mapping[str, str], cores: int) -> tuple[int | None, str]:
    """How many SDK worker processes share this machine, and what says so; (None, "") when nothing does."""
    told = environ.get(ENV_WORKER_PROCESSES, "").strip()
    if told:
        count = parse_count(told, ENV_WORKER_PROCESSES)
        return count, f"{ENV_WORKER_PROCESSES}={count}"
    experiments = _experiments(options.get("experiments"))
    if "no_use_multiple_sdk_containers" in experiments:
        return 1, "experiment no_use_multiple_sdk_containers: one SDK process per machine"
    runner = str(options.get("runner") or "")
    if "use_multiple_sdk_containers" in experiments or "dataflow" in runner.lower():
        return cores, "Dataflow: one SDK process per vCPU"
    parallelism = options.get("sdk_worker_parallelism")
    if parallelism is not None:
        try:
            count = int(str(parallelism))
        except ValueError:
            count = 0
        if count > 0:
            return count, f"sdk_worker_parallelism={count}"
    return None, ""


def resolve_budget(
    options: Mapping[str, Any], environ: Mapping[str, str], *, cores: int, sdk_worker: bool
) -> ThreadBudget:
    """The budget of a process with these pipeline options, environment, cores and role (see the module doc)."""
    explicit = options.get(OPTION)
    if explicit is not None and str(explicit).strip():
        return ThreadBudget(parse_threads(explicit, f"--{OPTION}"), f"--{OPTION}={explicit}")
    from_env = environ.get(ENV_THREADS, "").strip()
    if from_env:
        return ThreadBudget(parse_threads(from_env, ENV_THREADS), f"{ENV_THREADS}={from_env}")
    if not sdk_worker:
        return ThreadBudget(None, "not a Beam SDK worker process")
    processes, why = worker_processes(options, environ, cores)
    if processes is None:
        return ThreadBudget(
            1,
            f"SDK worker process; the runner does not say how many share the machine: set {ENV_WORKER_PROCESSES} "
            f"or --{OPTION} to use more",
        )
    if processes <= 1:
        return ThreadBudget(None, why)
    return ThreadBudget(max(1, cores // processes), f"{why}; {cores} cores")


# -- this process ------------------------------------------------------------------------------

_lock = threading.Lock()
_budget: ThreadBudget | None = None
_launcher_options: dict[str, Any] = {}


def process_options() -> dict[str, Any]:
    """The pipeline options this process knows: the runner's (in an SDK worker), then the launcher's own."""
    provider = sys.modules.get("apache_beam.options.value_provider")
    runtime = getattr(getattr(provider, "RuntimeValueProvider", None), "runtime_options", None)
    return {**(runtime if isinstance(runtime, Mapping) else {}), **_launcher_options}


@contextlib.contextmanager
def launcher_options(options: Mapping[str, Any]) -> Iterator[None]:
    """While a pipeline runs in this process, resolve the budget with its ``options`` too."""
    previous = dict(_launcher_options)
    _launcher_options.update(options)
    try:
        yield
    finally:
        _launcher_options.clear()
        _launcher_options.update(previous)


def check_settings() -> None:
    """Raise ThreadBudgetError for a thread setting of this process that is not valid (without fixing the budget)."""
    options = process_options()
    if options.get(OPTION) is not None and str(options[OPTION]).strip():
        parse_threads(options[OPTION], f"--{OPTION}")
    for name, parse in ((ENV_THREADS, parse_threads), (ENV_WORKER_PROCESSES, parse_count)):
        value = os.environ.get(name, "").strip()
        if value:
            parse(value, name)


def process_budget() -> ThreadBudget:
    """The budget of the running process: worked out and applied on first use, then fixed for its life."""
    budget = _budget
    if budget is not None:
        return budget
    return _fix_budget()


def _fix_budget() -> ThreadBudget:
    global _budget
    with _lock:
        if _budget is None:
            budget = resolve_budget(
                process_options(), os.environ, cores=available_cores(), sdk_worker=is_sdk_worker_process()
            )
            limit_native_pools(budget)
            logger.info("beam-m2v threads: %s", budget.describe())
            _budget = budget
        return _budget


def limit_native_pools(budget: ThreadBudget) -> None:
    """Size the tokenizer's Rayon pool and Arrow's CPU pool to ``budget`` (nothing for every core).

    One core: the tokenizer runs on the calling thread (``TOKENIZERS_PARALLELISM=false``).
    Variables already set in the environment are the user's and stay as they are.
    """
    if budget.threads is None:
        return
    if budget.threads == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAYON_NUM_THREADS", str(budget.threads))
    if pa.cpu_count() > budget.threads:
        pa.set_cpu_count(budget.threads)


def launcher_environment(explicit: str | None, multi_processing_workers: int | None) -> dict[str, str]:
    """What a launcher exports to worker processes that inherit its environment (FnApiRunner's multi_processing).

    Those workers see no pipeline options: they get the explicit budget, or else how many of
    them share the machine (``multi_processing_workers``; 0 means one per core, as Beam reads it).
    """
    if explicit is not None and str(explicit).strip():
        return {ENV_THREADS: str(explicit).strip()}
    if multi_processing_workers is None:
        return {}
    count = multi_processing_workers or available_cores()
    return {ENV_WORKER_PROCESSES: str(count)}


@contextlib.contextmanager
def exported(variables: Mapping[str, str]) -> Iterator[None]:
    """Set environment ``variables`` for this block (inherited by the processes started in it), then restore them."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
