"""The one check of a connector's config file, shared by every reader of it.

``adit tunnel ingress validate``, ``adit tunnel run`` at start and ``adit tunnel run`` on every
reload (SIGHUP, a changed credentials file) call :func:`validate_file`, so a file is accepted
or refused the same way by all three: a reload refused here leaves the previous configuration
serving, and a start refused here never connects.

The rules, in order:

* A file with ``ingress`` rules: the rules are validated (cloudflared's order and messages);
  the first invalid one is the error, with its location (``ingress[2].service``).
* A file without rules (no ``ingress`` key, ``ingress: []``, a misspelt ``ingres:``, an empty
  file) is accepted only when a single origin is given instead (``--url``, ``--hello-world``,
  ``--unix-socket``, ``--bastion``, as flags or keys): otherwise the connector would answer
  every request with 503, which no one writes a config file to get. ``ingress validate``
  refuses it likewise (cloudflared's "doesn't contain any ingress rules").
* No file at all: nothing to check; the flags decide (with none, cloudflared's default origin
  answers 503, what a remotely managed tunnel starts with).

Reading the file (a missing or unreadable file, a YAML or type error) is
:func:`adit.config.load.load_config`'s part, the same for every caller.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Final

from adit.config.errors import IngressError
from adit.config.ingress import NO_RULES_MESSAGE

if TYPE_CHECKING:
    from adit.config.ingress import Ingress
    from adit.config.load import LoadedConfig

__all__ = ["NO_RULES_HINT", "validate_file"]

NO_RULES_HINT: Final = (
    "add an `ingress:` list whose last rule matches every request "
    "(e.g. `- service: http_status:404`), or give a single origin with --url"
)


def validate_file(loaded: LoadedConfig | None, *, single_origin: bool) -> Ingress | None:
    """The file's validated ingress; ``None`` when the single origin (or no file) decides.

    ``single_origin``: one of ``--url``, ``--hello-world``, ``--unix-socket``, ``--bastion``
    is set. Raises :class:`IngressError` (cloudflared's message, a ``location`` and a
    ``hint``); :meth:`LoadedConfig.locate` turns it into an error naming the file and line.
    """
    if loaded is None:
        return None
    if loaded.config.ingress:
        return loaded.validate_ingress()
    if single_origin:
        return None
    raise IngressError(NO_RULES_MESSAGE, "ingress", _no_rules_hint(loaded))


def _no_rules_hint(loaded: LoadedConfig) -> str:
    if loaded.empty:
        return f"the file is empty (still being written?); {NO_RULES_HINT}"
    typos = difflib.get_close_matches("ingress", [str(k) for k in loaded.extra], n=1, cutoff=0.7)
    if typos:
        line = loaded.line_of(typos[0], key=True)
        where = f" (line {line})" if line is not None else ""
        return f"`{typos[0]}`{where} is not a key adit knows: did you mean `ingress`?"
    return NO_RULES_HINT
