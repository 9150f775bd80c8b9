"""The features a connection announces: cloudflared's selection of the datagram version."""

from __future__ import annotations

from adit.protocol.datagrams import DatagramVersion, datagram_version
from adit.workers.runtime import FEATURES, announced_features


def test_by_default_datagram_v2_is_announced_with_the_rest() -> None:
    features = announced_features([], post_quantum=False)
    assert features == FEATURES
    assert "support_datagram_v2" in features
    assert datagram_version(features) is DatagramVersion.V2


def test_features_add_to_the_defaults_and_v3_2_switches_the_datagram_version() -> None:
    features = announced_features(["support_datagram_v3_2", "custom"], post_quantum=False)
    # As cloudflared: v3_2 beside the default v2 (features/selector.go clientFeatures).
    assert set(FEATURES) <= set(features)
    assert {"support_datagram_v3_2", "custom"} <= set(features)
    assert datagram_version(features) is DatagramVersion.V3


def test_deprecated_datagram_features_are_dropped_and_names_are_announced_once() -> None:
    features = announced_features(
        ["support_datagram_v3", "support_datagram_v3_1", "support_datagram_v2", "x", "x"],
        post_quantum=True,
    )
    assert "support_datagram_v3" not in features and "support_datagram_v3_1" not in features
    assert len(features) == len(set(features))
    assert "postquantum" in features
    assert datagram_version(features) is DatagramVersion.V2


def test_a_connector_announcing_no_datagram_version_takes_no_udp() -> None:
    assert datagram_version(("serialized_headers",)) is None
