"""An ingress rule with no service but an unknown key: almost always a misspelt ``service``.

cloudflared reports unknown keys as a warning ("unused keys") and then fails the rule for
its empty service with `` is an invalid address``, which names neither the rule nor the typo.
Here that rule is refused with the file, the rule (``ingress[2]``), the unknown key and, when
one is close, the key that was meant. Unknown keys of a rule that has its service stay
cloudflared's warnings.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import msgspec

from adit.config.errors import IngressError
from adit.config.model import IngressRuleConfig

if TYPE_CHECKING:
    from adit.config.load import LoadedConfig

__all__ = ["UnknownRuleKey", "check_rule_keys"]

#: The keys of an ingress rule, as a config file spells them.
RULE_KEYS = tuple(f.encode_name for f in msgspec.structs.fields(IngressRuleConfig))


class UnknownRuleKey(IngressError):
    """A rule without a service that has an unknown key; ``location`` is the rule."""


def check_rule_keys(loaded: LoadedConfig) -> None:
    """Raise :class:`UnknownRuleKey` for the first rule with no service and an unknown key."""
    for index, rule in enumerate(loaded.config.ingress or []):
        if rule.service:
            continue
        prefix = f"ingress[{index}]."
        for warning in loaded.warnings:
            if warning.location != prefix + warning.key:
                continue  # another rule's, or deeper (originRequest.*): not this rule's own
            meant = difflib.get_close_matches(warning.key, RULE_KEYS, n=1, cutoff=0.6)
            guess = f' (did you mean "{meant[0]}"?)' if meant else ""
            hint = (
                f'rename "{warning.key}" to "{meant[0]}"'
                if meant
                else f"a rule's keys are {', '.join(RULE_KEYS)}; every rule needs a service"
            )
            raise UnknownRuleKey(
                f'unknown key "{warning.key}" on line {warning.line}{guess}, and the rule '
                "has no service",
                f"ingress[{index}]",
                hint,
            )
