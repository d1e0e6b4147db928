"""The ``slurm`` executor: sweep tasks as Slurm job arrays, through submitit.

Tasks with the same resources go into one job array (submitit's ``batch``); each task's
CPUs, memory, GPUs and time limit come from the task (derived by the sweep from model size
and data size). Partition, account and QoS come from the executor options (the plan's
``[executor_options]`` or ``--executor-option``), else from ``MTBENCH_SLURM_PARTITION``,
``MTBENCH_SLURM_ACCOUNT``, ``MTBENCH_SLURM_QOS``; when none is given sbatch applies the
cluster's defaults (and its own ``SBATCH_*`` variables). Job files go under the results
directory (``sweep/slurm/``) unless ``folder`` says otherwise: nothing is hard-coded.

Completion is read from ``squeue`` and submitit's result files, so clusters without job
accounting (no ``sacct``) work too: a job that left the queue without a result is reported
``lost`` (cancelled, killed, timed out) and its cell is resumed by the next sweep.
"""

from __future__ import annotations

import getpass
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mtbench.errors import MtbenchError

# how long a job may be gone from the queue before its missing result counts as lost
_RESULT_GRACE_S = 10.0


def _queued_ids() -> set[str] | None:
    """Ids (``123`` or ``123_4``) of this user's jobs in the queue; None if squeue fails."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


class SlurmExecutor:
    """Submit sweep tasks as Slurm job arrays and wait for them.

    Parameters
    ----------
    partition, account, qos : str, optional
        Default: ``MTBENCH_SLURM_PARTITION`` / ``_ACCOUNT`` / ``_QOS``, else the cluster's.
    folder : str, optional
        Where submitit keeps job scripts, logs and results; default ``RESULTS/sweep/slurm``.
    array_parallelism : int
        At most this many tasks of one array run at once.
    poll_seconds : float
        How often the queue is read.
    constraint : str, optional
        ``--constraint`` (e.g. a GPU model).
    """

    def __init__(self, partition: str | None = None, account: str | None = None, qos: str | None = None,
                 folder: str | None = None, array_parallelism: int = 256, poll_seconds: float = 2.0,
                 constraint: str | None = None):
        self.partition = partition or os.environ.get("MTBENCH_SLURM_PARTITION")
        self.account = account or os.environ.get("MTBENCH_SLURM_ACCOUNT")
        self.qos = qos or os.environ.get("MTBENCH_SLURM_QOS")
        self.folder, self.constraint = folder, constraint
        self.array_parallelism, self.poll_seconds = int(array_parallelism), float(poll_seconds)

    def parameters(self, resources, kind: str) -> dict:
        """submitit ``SlurmExecutor.update_parameters`` for tasks needing ``resources``."""
        params = {
            "job_name": f"mtbench-{kind}",
            "cpus_per_task": int(resources.cpus),
            "mem": f"{math.ceil(resources.mem_gb * 1024)}M",
            "time": int(resources.minutes),
            "array_parallelism": self.array_parallelism,
            "setup": ["export OPENBLAS_NUM_THREADS=1"],
        }
        if resources.gpus:
            params["gpus_per_node"] = int(resources.gpus)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        return params

    def submit(self, tasks: Sequence[Callable[[], str]]) -> list:
        """One job array per distinct (kind, resources); returns the jobs in task order."""
        try:
            import submitit
        except ImportError:
            raise MtbenchError("executor slurm needs submitit: pip install submitit") from None
        folder = Path(self.folder or Path(tasks[0].results_dir) / "sweep" / "slurm")
        by_resources: dict = {}
        for index, task in enumerate(tasks):
            by_resources.setdefault((task.kind, task.resources), []).append(index)
        jobs: list = [None] * len(tasks)
        for (kind, resources), indices in by_resources.items():
            executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=0)
            executor.update_parameters(**self.parameters(resources, kind))
            try:
                with executor.batch():
                    submitted = [executor.submit(tasks[i]) for i in indices]
            except Exception as exc:  # sbatch missing, controller down, bad partition...
                self.cancel([j for j in jobs if j is not None])
                line = str(exc).strip().splitlines()
                raise MtbenchError(f"executor slurm: submission failed ({line[-1] if line else exc}); "
                                   f"check `sinfo` and the partition/account/qos options") from None
            for i, job in zip(indices, submitted):
                jobs[i] = job
        return jobs

    @staticmethod
    def cancel(jobs: list) -> None:
        ids = sorted({str(job.job_id).split("_")[0] for job in jobs})
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)

    def run(self, tasks: Sequence[Callable[[], str]], poll: Callable[[], None]) -> list[str]:
        if not tasks:
            return []
        jobs = self.submit(tasks)
        statuses: list[str | None] = [None] * len(tasks)
        gone_since: dict[int, float] = {}
        failures = 0
        try:
            while any(s is None for s in statuses):
                time.sleep(self.poll_seconds)
                queued = _queued_ids()
                if queued is None:
                    failures += 1
                    if failures * self.poll_seconds > 300:
                        raise MtbenchError("executor slurm: squeue has failed for 5 minutes; is slurmctld up? "
                                           "(jobs keep running; run the sweep again to resume)")
                    continue
                failures = 0
                for index, job in enumerate(jobs):
                    if statuses[index] is not None:
                        continue
                    if job.paths.result_pickle.exists():
                        statuses[index] = self._outcome(job)
                    elif str(job.job_id) not in queued:
                        first = gone_since.setdefault(index, time.monotonic())
                        if time.monotonic() - first > _RESULT_GRACE_S:
                            statuses[index] = f"lost: job {job.job_id} left the queue without a result " \
                                              f"(cancelled, killed or timed out); log {job.paths.stdout}"
                poll()
        except KeyboardInterrupt:
            self.cancel(jobs)
            raise
        return [s or "lost" for s in statuses]

    @staticmethod
    def _outcome(job) -> str:
        try:
            return job.result()
        except Exception as exc:  # the task raised outside its own bookkeeping
            line = str(exc).strip().splitlines()
            return f"lost: {line[0] if line else type(exc).__name__}"
