"""Every registration value survives the real wire path: client encode -> server decode and back."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    RegistrationResult,
    TunnelAuth,
)
from adit.protocol.rpc import (
    CallReturned,
    RegisterConnectionCalled,
    RegistrationClientSession,
    RegistrationReturned,
    RegistrationServerSession,
    UpdateLocalConfigurationCalled,
)

# capnp Text is NUL-terminated on the wire; cloudflared never sends NUL inside a string.
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
uint8 = st.integers(min_value=0, max_value=255)

auths = st.builds(TunnelAuth, account_tag=texts, tunnel_secret=st.binary(max_size=64))
client_infos = st.builds(
    ClientInfo,
    client_id=st.uuids(),
    features=st.lists(texts, max_size=8).map(tuple),
    version=texts,
    arch=texts,
)
options = st.builds(
    ConnectionOptions,
    client=client_infos,
    origin_local_ip=st.sampled_from([b"", bytes(4), bytes(10) + b"\xff\xff\x7f\0\0\1"])
    | st.binary(max_size=16),
    replace_existing=st.booleans(),
    compression_quality=uint8,
    num_previous_attempts=uint8,
)
details = st.builds(
    ConnectionDetails,
    uuid=st.uuids(),
    location_name=texts,
    tunnel_is_remotely_managed=st.booleans(),
)
errors = st.builds(
    RegistrationError,
    cause=texts,
    retry_after_ns=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    should_retry=st.booleans(),
)
results: st.SearchStrategy[RegistrationResult] = details | errors


MINIMAL = (
    TunnelAuth("a", b"s"),
    uuid.UUID(int=1),
    0,
    ConnectionOptions(ClientInfo(uuid.UUID(int=2), (), "", "")),
)


def registered(
    auth: TunnelAuth, tunnel_id: uuid.UUID, conn_index: int, opts: ConnectionOptions
) -> tuple[RegistrationClientSession, RegistrationServerSession, RegisterConnectionCalled]:
    client = RegistrationClientSession()
    server = RegistrationServerSession()
    client.register(auth, tunnel_id, conn_index, opts)
    (event,) = server.receive_data(client.data_to_send())
    assert isinstance(event, RegisterConnectionCalled)
    return client, server, event


@given(auths, st.uuids(), uint8, options)
def test_register_params_round_trip(
    auth: TunnelAuth, tunnel_id: uuid.UUID, conn_index: int, opts: ConnectionOptions
) -> None:
    _, _, event = registered(auth, tunnel_id, conn_index, opts)
    assert event == RegisterConnectionCalled(
        answer_id=1, auth=auth, tunnel_id=tunnel_id, conn_index=conn_index, options=opts
    )
    assert event.auth.tunnel_secret == auth.tunnel_secret


@given(results)
def test_register_results_reach_the_client(result: RegistrationResult) -> None:
    client, server, event = registered(*MINIMAL)
    bootstrap_return = server.data_to_send()
    server.answer_register(event.answer_id, result)
    events = client.receive_data(bootstrap_return + server.data_to_send())
    assert events == [RegistrationReturned(result=result)]


@given(st.binary(max_size=4096))
def test_local_configuration_round_trip(config: bytes) -> None:
    client, server, event = registered(*MINIMAL)
    server.answer_register(event.answer_id, ConnectionDetails(uuid.UUID(int=3), "X"))
    client.receive_data(server.data_to_send())
    question = client.update_local_configuration(config)
    (update,) = server.receive_data(client.data_to_send())
    assert update == UpdateLocalConfigurationCalled(answer_id=question, config=config)
    server.answer_empty(update.answer_id)
    assert client.receive_data(server.data_to_send()) == [CallReturned(question)]


def test_large_configuration() -> None:
    config = bytes(range(256)) * 1024  # 256 KiB
    client, server, event = registered(*MINIMAL)
    server.answer_register(event.answer_id, ConnectionDetails(uuid.UUID(int=3), "X"))
    client.receive_data(server.data_to_send())
    question = client.update_local_configuration(config)
    (update,) = server.receive_data(client.data_to_send())
    assert update == UpdateLocalConfigurationCalled(answer_id=question, config=config)
