"""The RPC layer's values (msgspec Structs): frozen, compared by fields, secrets out of repr."""

from __future__ import annotations

import uuid

import pytest

from adit.protocol.registration import ClientInfo, ConnectionOptions, TunnelAuth
from adit.protocol.rpc_events import UpdateLocalConfigurationCalled
from adit.protocol.rpc_messages import CallMessage, ImportedCapTarget, ReturnMessage


def test_the_tunnel_secret_stays_out_of_repr() -> None:
    auth = TunnelAuth("account", b"very-secret")
    assert repr(auth) == "TunnelAuth(account_tag='account')"
    assert "secret" not in repr(ConnectionOptions(ClientInfo(uuid.UUID(int=1), (), "v", "a")))


def test_raw_bytes_stay_out_of_repr() -> None:
    call = CallMessage(1, ImportedCapTarget(2), 3, 4, True, b"\x00" * 64)
    assert repr(call) == (
        "CallMessage(question_id=1, target=ImportedCapTarget(import_id=2), interface_id=3, "
        "method_id=4, results_to_caller=True)"
    )
    assert "raw" not in repr(ReturnMessage(1, "results", "", (), b"x"))
    assert repr(UpdateLocalConfigurationCalled(5, b"{}")) == (
        "UpdateLocalConfigurationCalled(answer_id=5)"
    )


def test_values_are_frozen_and_compared_by_their_fields() -> None:
    client = ClientInfo(uuid.UUID(int=1), ("a",), "v", "linux_amd64")
    same = ClientInfo(client_id=uuid.UUID(int=1), features=("a",), version="v", arch="linux_amd64")
    assert client == same and hash(client) == hash(same)
    assert ConnectionOptions(client) != ConnectionOptions(client, replace_existing=True)
    with pytest.raises(AttributeError):
        client.version = "w"  # type: ignore[misc]
    match ConnectionOptions(client, num_previous_attempts=2):
        case ConnectionOptions(found, _, _, _, attempts):
            assert (found, attempts) == (client, 2)
