"""The edge's refusals of what a user, an admin or the API asked of its state.

Every one is a :class:`StoreError` whose ``str()`` is a message fit for the API's envelope and
the admin CLI; the API maps each class to its status and Cloudflare code in one table.
"""

from __future__ import annotations

__all__ = [
    "AccountNotFound",
    "DnsRecordConflict",
    "DnsUpdateFailed",
    "HostnameConflict",
    "HostnameNotRouted",
    "HostnameOutsideZones",
    "HostnameRefused",
    "HostnameTaken",
    "InvalidName",
    "IpRouteConflict",
    "IpRouteNotFound",
    "NetworkRefused",
    "StoreBusy",
    "StoreError",
    "TunnelDeleted",
    "TunnelHasRoutes",
    "TunnelNameConflict",
    "TunnelNotFound",
    "VirtualNetworkInUse",
    "VirtualNetworkIsDefault",
    "VirtualNetworkNameConflict",
    "VirtualNetworkNotFound",
    "WeakSecret",
    "ZoneNotFound",
    "ZoneRefused",
    "ZoneTaken",
]


class StoreError(Exception):
    """Base of the store's refusals; ``str()`` is a message fit for an API error."""


class StoreBusy(StoreError):
    """Another process holds the store's write lock past this write's deadline; nothing was
    written, and the same call may be tried again."""


class AccountNotFound(StoreError):
    """No account with that tag."""


class TunnelNotFound(StoreError):
    """No tunnel with that ID in the caller's account."""


class TunnelDeleted(StoreError):
    """The tunnel exists but was deleted."""


class TunnelNameConflict(StoreError):
    """A non-deleted tunnel of the account already has that name."""


class InvalidName(StoreError):
    """A name given by a user (tunnel, account, token label) that the edge does not keep:
    empty, too long, or with control characters that would rewrite a terminal."""


class WeakSecret(StoreError):
    """A tunnel secret a guess could find (all zero, a short repeated pattern)."""


class HostnameConflict(StoreError):
    """The hostname routes to another tunnel of the account and overwrite was not asked."""


class DnsRecordConflict(HostnameConflict):
    """The zone's DNS server holds another record at the route's name (or refused an update's
    prerequisites), and overwrite was not asked or could not help."""


class DnsUpdateFailed(StoreError):
    """The zone's DNS server could not be reached, or refused a query or update (TSIG,
    policy, timeout); the message names the server and its reason, never the key's secret."""


class HostnameNotRouted(StoreError):
    """The hostname does not route to that tunnel of the account."""


class HostnameTaken(StoreError):
    """The hostname is routed by another account."""


class HostnameRefused(StoreError):
    """No route can have this name: not a hostname, a single label, or a public suffix."""


class HostnameOutsideZones(StoreError):
    """The route's name lies in none of the account's zones."""

    def __init__(self, hostname: str, zone: str, account_tag: str) -> None:
        super().__init__(
            f"{hostname} is not in a zone of this account: ask the edge's administrator to add "
            f"the zone (adit edge zone add --account {account_tag} {zone})"
        )
        self.hostname = hostname
        #: The zone that would hold it (the registrable domain).
        self.zone = zone


class ZoneRefused(StoreError):
    """No zone can have this name: not a hostname, a single label, a public suffix, or a
    name the edge keeps for itself."""


class ZoneTaken(StoreError):
    """The zone is, contains or lies inside another account's zone (or routes)."""


class ZoneNotFound(StoreError):
    """No zone of that name."""


class TunnelHasRoutes(StoreError):
    """The tunnel still has IP routes and deleting them with it (cascade) was not asked."""


class NetworkRefused(StoreError):
    """An IP route's network is no CIDR network, or an address with host bits set."""


class IpRouteConflict(StoreError):
    """The virtual network already routes exactly this network (each prefix once per virtual
    network, as Cloudflare has it)."""


class IpRouteNotFound(StoreError):
    """No live IP route with that ID (or network) in the caller's account."""


class VirtualNetworkNotFound(StoreError):
    """No live virtual network with that ID in the caller's account."""


class VirtualNetworkNameConflict(StoreError):
    """Another live virtual network of the account has that name."""


class VirtualNetworkInUse(StoreError):
    """The virtual network still has IP routes and force was not asked."""


class VirtualNetworkIsDefault(StoreError):
    """What was asked would leave the account without a default virtual network: deleting the
    default one, or making it not the default."""
