"""``python -m ionflow.cli``."""

from ionflow.cli import main

main()
