"""``python -m mtbench.cli``."""

from . import main

main()
