"""Registration of the built-in sweep executors (nothing heavy imported here)."""

from mtbench.api import ExecutorEntry
from mtbench.hookspecs import hookimpl


def _load_local(**options):
    from mtbench_plugins.executors.local import LocalExecutor

    return LocalExecutor(**options)


def _load_slurm(**options):
    from mtbench_plugins.executors.slurm import SlurmExecutor

    return SlurmExecutor(**options)


@hookimpl
def register_executors():
    return [
        ExecutorEntry(name="local", summary="process pool sized to this machine's CPUs, with a memory guard",
                      load=_load_local, options=("workers", "memory_fraction", "poll_seconds")),
        ExecutorEntry(name="slurm", summary="Slurm job arrays through submitit (partition/account/qos from the "
                                            "plan or MTBENCH_SLURM_*)", load=_load_slurm,
                      options=("partition", "account", "qos", "folder", "array_parallelism", "poll_seconds",
                               "constraint")),
    ]
