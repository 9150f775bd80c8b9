"""Which edge address each HA connection dials: spread over locations, one connection each.

Pure functions over the configured :class:`~adit.ipc.messages.EdgeTarget` list, so every
worker computes the same assignment without talking to the others:

* An address's location is ``EdgeTarget.location`` (addresses of different ``adit edge``
  processes are different locations; a plain ``--edge`` list is split alternately into two
  pseudo-locations, as cloudflared does).
* :func:`spread` orders the addresses round-robin over the locations, and connection ``i``'s
  home is the ``i``-th of that order: any number of connections is as balanced as the
  addresses allow, so losing one location of two keeps at least half of them.
* One address serves at most one connection of this connector (cloudflared's rule): a
  connection whose address fails moves only to a free one (:func:`fallback`), preferring the
  location with fewer of our connections; with none free it stays and backs off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adit.ipc.messages import EdgeTarget

__all__ = ["fallback", "home_address", "spread"]


def spread(edges: Sequence[EdgeTarget]) -> list[int]:
    """Indexes of ``edges`` in the order connections take them: round-robin over locations
    (in order of first appearance), each location's addresses in their given order."""
    groups: dict[int, list[int]] = {}
    for index, target in enumerate(edges):
        groups.setdefault(target.location, []).append(index)
    order: list[int] = []
    queues = list(groups.values())
    depth = 0
    while len(order) < len(edges):
        for queue in queues:
            if depth < len(queue):
                order.append(queue[depth])
        depth += 1
    return order


def home_address(edges: Sequence[EdgeTarget], conn_index: int) -> int:
    """The address index connection ``conn_index`` dials first (wrapping when there are more
    connections than addresses, which the CLI prevents)."""
    order = spread(edges)
    return order[conn_index % len(order)]


def fallback(
    edges: Sequence[EdgeTarget],
    conn_index: int,
    current: int,
    ha_connections: int,
    in_use: Mapping[int, int],
    learned: Mapping[int, str] | None = None,
) -> int:
    """Where connection ``conn_index`` goes after its address ``current`` failed to dial.

    ``in_use`` maps this worker's other connections to the address they hold; the homes of
    the connector's other connections (indexes below ``ha_connections``) are taken too. A
    free address in the location holding fewer of our connections wins (on a tie, one in
    another location than ``current``'s); with nothing free the connection keeps ``current``.
    ``learned`` names the location an address reported at registration, when known.
    """
    names = learned or {}

    def location_of(index: int) -> str:
        return names.get(index, f"#{edges[index].location}")

    order = spread(edges)
    taken = {order[i] for i in range(min(ha_connections, len(order))) if i != conn_index}
    taken |= {address for other, address in in_use.items() if other != conn_index}
    free = [i for i in order if i not in taken and i != current]
    if not free:
        return current
    load: dict[str, int] = {}
    for other, address in in_use.items():
        if other != conn_index:
            load[location_of(address)] = load.get(location_of(address), 0) + 1
    here = location_of(current)
    return min(
        free,
        key=lambda i: (load.get(location_of(i), 0), location_of(i) == here, order.index(i)),
    )
