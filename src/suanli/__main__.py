"""``python -m suanli`` is the ``suanli`` command."""

from suanli.cli import main

main()
