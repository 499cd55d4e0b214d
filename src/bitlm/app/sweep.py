"""Multirun (``-m``, ``hparams_search=optuna``) bookkeeping: a job that fails is one line on
stderr and a record, and the other jobs run; at the end, how many ran and how many failed.

Jobs may run in other processes or on other machines (``hydra/launcher=slurm``), so each job's
outcome is a file in the sweep folder, ``<sweep dir>/jobs/<job number>.json``, which the Hydra
callback ``SweepSummary`` (``hydra.callbacks`` in configs/hydra/default.yaml) reads when the
sweep ends, into ``<sweep dir>/summary.json``."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bitlm.core.files import write_atomic
from bitlm.training.callbacks.progress import log_to_files

log = logging.getLogger(__name__)

RECORDS = "jobs"
SUMMARY = "summary.json"
ALL_FAILED = 1
"""Exit status of a sweep whose every job failed: not 2, which says the command was refused
before anything ran (fix the command line); 1 says jobs ran and ``summary.json`` tells why
each failed."""


def record_job(error: str | None) -> None:
    """Write this job's record (number, overrides, run dir, and its error or None) atomically:
    readers never see a part of one, whichever process writes it."""
    hydra = HydraConfig.get()
    record = {
        "job": hydra.job.num,
        "overrides": list(hydra.overrides.task),
        "run_dir": hydra.runtime.output_dir,
        "error": error,
    }
    folder = Path(hydra.sweep.dir) / RECORDS
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{hydra.job.num}.json", json.dumps(record).encode())


def report_failure(message: str, error: BaseException | None = None) -> None:
    """A failed job: ``error: job N (its overrides): message`` on stderr; that line, and the
    traceback of an unexpected ``error``, in the job's log; its record."""
    hydra = HydraConfig.get()
    line = f"error: job {hydra.job.num} ({' '.join(hydra.overrides.task)}): {message}"
    logs = log_to_files(log, logging.ERROR, line, error)
    where = f" (traceback in {logs[0]})" if error is not None and logs else ""
    print(line + where, file=sys.stderr, flush=True)
    record_job(message)


class SweepSummary(Callback):
    """At the start of a multirun, drop the job records an earlier sweep into the same folder
    left; at its end, count the records, write ``summary.json`` and say on stderr how many jobs
    ran and failed. Every job failed: exit with ``ALL_FAILED``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / RECORDS, ignore_errors=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        paths = sorted((folder / RECORDS).glob("*.json"), key=lambda p: int(p.stem))
        records = [json.loads(path.read_text()) for path in paths]
        failed = [record for record in records if record["error"] is not None]
        summary = {"jobs": len(records), "failed": len(failed), "failures": failed}
        write_atomic(folder / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
        numbers = f" (job {', '.join(str(r['job']) for r in failed)})" if failed else ""
        print(
            f"sweep: {len(records)} jobs ran, {len(failed)} failed{numbers}; "
            f"summary in {folder / SUMMARY}",
            file=sys.stderr,
            flush=True,
        )
        if len(failed) == len(records):
            sys.exit(ALL_FAILED)
