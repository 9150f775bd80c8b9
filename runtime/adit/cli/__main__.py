"""``python -m adit.cli``: the same as the ``adit`` console script."""

from __future__ import annotations

from adit.cli.main import main

main()
