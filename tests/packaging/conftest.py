"""The packaging stage runs only from ``./run packages-test`` (root, debootstrap, systemd-nspawn).

The unit suite collects tests/ as a whole; without ``ADIT_PACKAGES_TEST=1`` these modules are
not even imported, so ``./run test`` stays fast and needs no privileges.
"""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("ADIT_PACKAGES_TEST") == "1" else ["test_*.py"]
