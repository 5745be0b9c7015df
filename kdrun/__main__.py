"""``python -m kdrun`` runs the ``kdrun`` command."""

from kdrun.cli import main

main()
