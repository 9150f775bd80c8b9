"""The packaging stage runs only from ``./run packages-test`` (root, debootstrap, systemd-nspawn).

The unit suite collects tests/ as a whole; without ``ADIT_PACKAGES_TEST=1`` these modules are
not even imported, so ``./run test`` stays fast and needs no privileges.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from package_repository import Repository

collect_ignore_glob = [] if os.environ.get("ADIT_PACKAGES_TEST") == "1" else ["test_*.py"]


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    """The signed repositories, built once per session by ``./run repo`` (two runs at once)."""
    from distro_roots import SUITES, cached_roots
    from package_repository import build_repository

    # The cached roots first: the two runs would otherwise both debootstrap a missing one.
    cached_roots(SUITES)
    yield from build_repository(tmp_path_factory.mktemp("repository"))
