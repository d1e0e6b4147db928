"""The ``mtbench`` command line: the pipeline's ``run``, ``list`` and ``plugins``; every other command
comes from a plugin (``register_commands``), the built-in ones included.

Library code never imports this package; commands import the library.
"""

from __future__ import annotations

import os

# numpy's OpenBLAS and torch's MKL thread pools fight on small machines (measured 8x slower);
# torch does the heavy lifting, so keep OpenBLAS single-threaded unless the user says otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402

import click  # noqa: E402

from ..errors import MtbenchError, first_line  # noqa: E402
from ..memory import affinity_cpus, usable_cpus  # noqa: E402
from ..registry import get_registry  # noqa: E402
from .listing import list_cmd, plugins  # noqa: E402
from .run_command import run  # noqa: E402

# torch (imported later, by the commands that need it) sizes its thread pool by the cores it
# sees; under a container's CPU quota the pool is throttled as a whole (several times slower),
# so it is sized by the quota unless the user chose
if usable_cpus() < affinity_cpus():
    os.environ.setdefault("OMP_NUM_THREADS", str(usable_cpus()))


class MainGroup(click.Group):
    """The ``mtbench`` group: plugin commands join it on first use; MtbenchError (and running out of memory) is
    one line on stderr, exit 2."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            get_registry().add_commands(self)

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._add_plugin_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MtbenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except MemoryError as exc:  # what no estimate foresaw (an allocation the estimates do not cover)
            click.echo(f"Error: out of memory ({first_line(exc)}); ask for less (a smaller model option, fewer "
                       "--permutations, fewer states or layers per run) or use a machine with more memory", err=True)
            sys.exit(2)


@click.group(cls=MainGroup)
@click.version_option(package_name="mtbench")
def main():
    """mtbench: which computation inside a transformer block best predicts each brain region."""


main.add_command(run)
main.add_command(list_cmd)
main.add_command(plugins)
