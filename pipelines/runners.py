"""Choosing and starting a Beam runner: in-process by default, Dask when asked.

* ``direct`` with one worker: Beam's FnApiRunner in this process (named explicitly: plain
  ``DirectRunner`` first tries to download the Prism binary, which fails offline).
* ``direct`` with N > 1 workers: the FnApiRunner with ``--direct_running_mode=
  multi_processing --direct_num_workers=N`` (poisonguard must be installed, since the
  worker processes import it).
* ``dask``: Beam's DaskRunner against ``--dask-address``, or against a
  ``dask.distributed.LocalCluster`` of N single-threaded worker processes started here and
  shut down afterwards.

Other Beam options (Flink, Spark, Dataflow...) pass through unchanged after ``--``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from ..schemas import ConfigError

RUNNERS = ("direct", "dask")


@dataclass(frozen=True)
class RunnerConfig:
    """Where a job runs. ``beam_args`` are extra Beam pipeline options, passed through."""

    runner: str = "direct"
    workers: int = 1
    dask_address: str | None = None
    beam_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.runner not in RUNNERS:
            raise ConfigError(f"--runner: unknown runner {self.runner!r}; expected one of: {', '.join(RUNNERS)}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"--workers: expected a positive integer, got {self.workers!r}")
        if self.dask_address is not None and self.runner != "dask":
            raise ConfigError("--dask-address needs --runner dask")

    def describe(self) -> dict:
        return {"runner": self.runner, "workers": self.workers, "dask_address": self.dask_address, "beam_args": list(self.beam_args)}


class RunnerSession:
    """Runs pipelines one after another on one runner (and one Dask cluster, if any)."""

    def __init__(self, config: RunnerConfig, address: str | None = None):
        self.config = config
        self._address = address

    def run(self, build) -> None:
        """Build a pipeline with ``build(pipeline)`` and run it to completion."""
        with _plain_labels_under_ipython():
            self._run(build)

    def _run(self, build) -> None:
        args = list(self.config.beam_args)
        if self.config.runner == "direct":
            from apache_beam.runners.portability.fn_api_runner import FnApiRunner

            quiet = contextlib.nullcontext()
            if self.config.workers > 1:
                args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={self.config.workers}"]
                if logging.getLogger().level > logging.WARNING:
                    quiet = _worker_stderr_captured()
            with quiet, beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(args)) as p:
                build(p)
            return
        from apache_beam.runners.dask.dask_runner import DaskRunner

        if not any(a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in args):
            # Dask packs up to 128 elements into one partition: spread the work over the workers.
            args.append(f"--dask_npartitions={max(self.config.workers, 1) * 2}")
        p = beam.Pipeline(runner=DaskRunner(), options=PipelineOptions(args + [f"--dask_client_address={self._address}"]))
        build(p)
        result = p.run()
        try:
            result.wait_until_finish()
        finally:
            result.client.close()


#: Set by the command line when Ctrl-C (SIGINT) arrives. A run that fails after it was
#: stopped, not broken: the workers' own KeyboardInterrupt tracebacks are not shown.
INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _worker_stderr_captured():
    """Hold back what worker processes write to stderr; show its tail only if the run fails.

    Beam's SDK worker processes (``--direct_running_mode=multi_processing``) inherit this
    process's stderr and log their start-up and shutdown at INFO, with no option to change
    that; it would bury the progress and error messages. After Ctrl-C (which reaches the
    workers too) nothing is shown: the command line says it was interrupted.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as held:
            try:
                # inside the try: a Ctrl-C that lands just after the switch must still switch back, or the
                # command line's "interrupted" line would go into the held file (seen once in CI)
                os.dup2(held.fileno(), 2)
                yield
            except BaseException as exc:
                os.dup2(saved, 2)
                if isinstance(exc, KeyboardInterrupt) or INTERRUPTED.is_set():
                    raise
                held.seek(0, os.SEEK_END)
                held.seek(max(held.tell() - 4000, 0))
                sys.stderr.write(held.read().decode("utf-8", "replace"))
                raise
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def _plain_labels_under_ipython():
    """Build pipelines in Jupyter/IPython without Beam's interactive relabelling.

    Under IPython, Beam prefixes top-level labels with the cell number, and to do so imports
    its interactive package, which imports the Beam DataFrame API, which fails to import
    with pandas 3 (AttributeError: 'DataFrame' has no attribute 'first'). The labels are
    cosmetic and our pipelines internal, so the relabelling is switched off while building.
    """
    from apache_beam import pipeline as beam_pipeline
    from apache_beam.utils.interactive_utils import is_in_ipython

    if not is_in_ipython():
        yield
        return
    original = beam_pipeline.alter_label_if_ipython
    beam_pipeline.alter_label_if_ipython = lambda transform, pvalueish: None
    try:
        yield
    finally:
        beam_pipeline.alter_label_if_ipython = original


@contextlib.contextmanager
def runner_session(config: RunnerConfig):
    """Yield a :class:`RunnerSession`; starts and stops a local Dask cluster when one is needed."""
    if config.runner == "direct" or config.dask_address is not None:
        yield RunnerSession(config, config.dask_address)
        return
    from dask.distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        if logging.getLogger().level > logging.WARNING:
            with Client(cluster) as client:
                client.register_plugin(_quiet_worker_logging())
        yield RunnerSession(config, cluster.scheduler_address)


def _quiet_worker_logging():
    from distributed import WorkerPlugin

    class QuietWorkerLogging(WorkerPlugin):
        """Keep library warnings (Beam's import-time ones) off the terminal of local workers."""

        def setup(self, worker):
            logging.getLogger().setLevel(logging.ERROR)

    return QuietWorkerLogging()
