"""``--runner=pool_runner.ExternalPoolRunner``: FnApiRunner with its SDK workers in an EXTERNAL worker pool.

Beam's PortableRunner with ``--job_endpoint=embed`` runs a job on one SDK worker process,
whatever ``--sdk_worker_parallelism`` says. This runner drives the same Fn API and the same
pool (``--environment_config=HOST:PORT`` of ``python -m apache_beam.runners.worker.worker_pool_main``),
but asks it for ``--direct_num_workers`` worker processes: what a cluster runner does on a
machine with several task slots. Its module must be importable by the launcher (``bench/`` on
PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

from apache_beam.options.pipeline_options import PortableOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import ExternalEnvironment


class ExternalPoolRunner(FnApiRunner):  # type: ignore[misc]
    """FnApiRunner whose default environment is the EXTERNAL pool named by ``--environment_config``."""

    def run_pipeline(self, pipeline: Any, options: Any) -> Any:
        address = options.view_as(PortableOptions).environment_config
        if not address:
            raise ValueError("ExternalPoolRunner needs --environment_config=HOST:PORT of a Beam worker pool")
        self._default_environment = ExternalEnvironment(address)
        return super().run_pipeline(pipeline, options)
