"""The in-memory route table: exact names, nearest wildcard, O(labels)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from adit.edge.route_table import Route, RouteTable

labels = st.sampled_from(["a", "b", "c", "example", "com"])
names = st.lists(labels, min_size=1, max_size=5).map(".".join)
patterns = st.one_of(names, names.map("*.".__add__))


def reference(routes: dict[str, Route], name: str) -> Route | None:
    """The rule as stated: the exact route, else the wildcard whose base is the longest
    proper suffix of the name."""
    if name in routes:
        return routes[name]
    covering = [
        pattern[2:]
        for pattern in routes
        if pattern.startswith("*.") and name.endswith("." + pattern[2:])
    ]
    return routes["*." + max(covering, key=len)] if covering else None


@settings(max_examples=300, deadline=None)
@given(st.lists(patterns, max_size=12, unique=True), names)
def test_lookup_equals_the_brute_force_reference(patterns_: list[str], name: str) -> None:
    routes = {p: Route(uuid.uuid4(), p) for p in patterns_}
    table = RouteTable.build(1, routes.items())
    assert table.find(name) == reference(routes, name)
    assert len(table) == len(routes)


def test_wildcards_cover_subdomains_not_the_apex() -> None:
    web, api = Route(uuid.uuid4(), "a"), Route(uuid.uuid4(), "a")
    table = RouteTable.build(1, [("*.example.com", web), ("api.example.com", api)])
    assert table.find("x.example.com") == web
    assert table.find("x.y.example.com") == web
    assert table.find("api.example.com") == api
    assert table.find("example.com") is None
    assert table.find("badexample.com") is None
    assert RouteTable().find("example.com") is None


def test_a_name_of_many_labels_costs_one_probe_per_label() -> None:
    probes: list[str] = []

    class Counting(dict[str, Route]):
        def get(self, key: str, default: Route | None = None) -> Route | None:  # type: ignore[override]
            probes.append(key)
            return super().get(key, default)

    table = RouteTable(1, {}, Counting({"zz": Route(uuid.uuid4(), "a")}))
    assert table.find(".".join(["a"] * 100)) is None
    assert len(probes) == 99
