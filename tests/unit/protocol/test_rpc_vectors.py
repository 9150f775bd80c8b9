"""The RPC sessions against cloudflared's own control-stream bytes (golden vectors, §3.4).

(a) cloudflared's messages drive the server session; (b) the captured edge answers drive the
client session; (c) the client's bytes equal cloudflared's, message for message.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from adit.protocol.framing import MessageSplitter
from adit.protocol.registration import (
    ClientInfo,
    ConnectionDetails,
    ConnectionOptions,
    RegistrationError,
    TunnelAuth,
)
from adit.protocol.rpc import (
    CallReturned,
    RegisterConnectionCalled,
    RegistrationClientSession,
    RegistrationReturned,
    RegistrationServerSession,
    RpcAborted,
    UnregisterConnectionCalled,
    UpdateLocalConfigurationCalled,
)
from adit.protocol.rpc_messages import CapDescriptor, ReturnMessage, decode_message

CORPUS = Path(__file__).parents[2] / "corpus" / "rpc_control_stream"

ACCOUNT_TAG = "0123456789abcdef0123456789abcdef"
SECRET = b"S" * 32
TUNNEL_ID = uuid.UUID("cce48637-f5a9-4699-b732-a486cd66b001")
CLIENT_ID = uuid.UUID("5b058ccd-b896-4081-84b3-039cb5d76e9c")
FEATURES = (
    "allow_remote_config",
    "serialized_headers",
    "support_datagram_v2",
    "support_quic_eof",
    "management_logs",
)
ORIGIN_LOCAL_IP = bytes(10) + b"\xff\xff\x7f\x00\x00\x01"  # ::ffff:127.0.0.1
AUTH = TunnelAuth(account_tag=ACCOUNT_TAG, tunnel_secret=SECRET)
OPTIONS = ConnectionOptions(
    client=ClientInfo(client_id=CLIENT_ID, features=FEATURES, version="DEV", arch="linux_amd64"),
    origin_local_ip=ORIGIN_LOCAL_IP,
)
DETAILS = ConnectionDetails(
    uuid=uuid.UUID("11111111-2222-3333-4444-555555555555"), location_name="SPK1"
)


def vector(number: int) -> bytes:
    (path,) = CORPUS.glob(f"{number:02d}-*.bin")
    return path.read_bytes()


def config_json() -> bytes:
    raw = vector(7)
    start = raw.index(b'{"__configuration_flags"')
    return raw[start : raw.index(b"\0", start)]


# (a) cloudflared -> our edge ------------------------------------------------------------------


def test_server_decodes_cloudflareds_registration() -> None:
    server = RegistrationServerSession()
    assert server.receive_data(vector(1)) == []
    reply = server.data_to_send()
    (event,) = server.receive_data(vector(2))
    assert isinstance(event, RegisterConnectionCalled)
    assert event.answer_id == 1
    assert event.auth == AUTH
    assert event.auth.tunnel_secret == SECRET
    assert event.tunnel_id == TUNNEL_ID
    assert event.conn_index == 0
    assert event.options == OPTIONS
    assert (
        str(uuid.UUID(bytes=event.options.origin_local_ip))
        == "00000000-0000-0000-0000-ffff7f000001"
    )
    # The bootstrap Return carries our capability as senderHosted export 0.
    bootstrap_return = decode_message(reply)
    assert isinstance(bootstrap_return, ReturnMessage)
    assert bootstrap_return.answer_id == 0
    assert bootstrap_return.cap_table == (CapDescriptor("senderHosted", 0),)


def test_server_bootstrap_return_content_is_a_capability_pointer() -> None:
    server = RegistrationServerSession()
    server.receive_data(vector(1))
    reply = server.data_to_send()
    # Same content pointer word as the edge encoding cloudflared accepted (03): kind 3, index 0.
    assert reply[56:64] == vector(3)[56:64] == b"\x03" + bytes(7)
    assert len(reply) == len(vector(3))


def test_server_runs_the_whole_cloudflared_session() -> None:
    server = RegistrationServerSession()
    server.receive_data(vector(1))
    (register,) = server.receive_data(vector(2))
    assert isinstance(register, RegisterConnectionCalled)
    server.answer_register(register.answer_id, DETAILS)
    assert server.receive_data(vector(4) + vector(6)) == []

    (update,) = server.receive_data(vector(7))
    assert isinstance(update, UpdateLocalConfigurationCalled)
    assert update.answer_id == 1
    config = json.loads(update.config)
    assert config["__configuration_flags"]["protocol"] == "http2"
    assert config["ingress"][0] == {
        "hostname": "test.local",
        "service": "http://127.0.0.1:8081",
        "originRequest": {},
    }
    assert config["ingress"][-1]["service"] == "http_status:404"
    server.answer_empty(update.answer_id)
    assert server.receive_data(vector(9)) == []

    (unregister,) = server.receive_data(vector(10))
    assert unregister == UnregisterConnectionCalled(answer_id=1)
    server.answer_empty(unregister.answer_id)
    assert server.receive_data(vector(12) + vector(13)) == []
    assert server.receive_data(vector(14)) == [RpcAborted(reason="rpc: shutdown")]
    assert server.closed
    replies = [decode_message(m) for m in MessageSplitter().feed(server.data_to_send())]
    assert all(isinstance(m, ReturnMessage) and m.outcome == "results" for m in replies)
    assert [m.answer_id for m in replies if isinstance(m, ReturnMessage)] == [0, 1, 1, 1]


def test_server_accepts_the_whole_stream_at_once() -> None:
    server = RegistrationServerSession()
    stream = (CORPUS / "rpc_cloudflared_to_edge.bin").read_bytes()
    events = server.receive_data(stream[:592])  # Bootstrap + registerConnection
    assert [type(e) for e in events] == [RegisterConnectionCalled]


# (b) the captured edge -> our connector -------------------------------------------------------


def registered_client() -> RegistrationClientSession:
    client = RegistrationClientSession()
    client.register(AUTH, TUNNEL_ID, 0, OPTIONS)
    return client


def test_client_decodes_the_edges_answers() -> None:
    client = registered_client()
    client.data_to_send()
    assert client.receive_data(vector(3)) == []
    assert client.registration_capability == 0
    assert client.receive_data(vector(5)) == [RegistrationReturned(result=DETAILS)]

    question = client.update_local_configuration(config_json())
    assert question == 1
    assert client.receive_data(vector(8)) == [CallReturned(question_id=1)]
    question = client.unregister()
    assert question == 1
    assert client.receive_data(vector(11)) == [CallReturned(question_id=1)]


def test_client_accepts_the_edge_stream_in_one_piece() -> None:
    client = registered_client()
    stream = (CORPUS / "rpc_edge_to_cloudflared.bin").read_bytes()
    events = client.receive_data(stream[: len(vector(3)) + len(vector(5))])
    assert events == [RegistrationReturned(result=DETAILS)]


# (c) our connector's bytes == cloudflared's bytes ---------------------------------------------


def test_client_bytes_equal_cloudflareds() -> None:
    client = registered_client()
    assert client.data_to_send() == vector(1) + vector(2)
    client.receive_data(vector(3))
    assert client.data_to_send() == vector(4)
    client.receive_data(vector(5))
    assert client.data_to_send() == vector(6)
    client.update_local_configuration(config_json())
    assert client.data_to_send() == vector(7)
    client.receive_data(vector(8))
    assert client.data_to_send() == vector(9)
    client.unregister()
    assert client.data_to_send() == vector(10)
    client.receive_data(vector(11))
    assert client.data_to_send() == vector(12)
    client.close()
    assert client.data_to_send() == vector(13) + vector(14)
    assert client.closed


def test_client_whole_stream_equals_cloudflareds_stream() -> None:
    client = registered_client()
    out = client.data_to_send()
    for number in (3, 5):
        client.receive_data(vector(number))
        out += client.data_to_send()
    client.update_local_configuration(config_json())
    client.receive_data(vector(8))
    client.unregister()
    client.receive_data(vector(11))
    client.close()
    out += client.data_to_send()
    assert out == (CORPUS / "rpc_cloudflared_to_edge.bin").read_bytes()


def test_registration_error_from_the_edge() -> None:
    client = registered_client()
    server = RegistrationServerSession()
    (event,) = server.receive_data(client.data_to_send())
    assert isinstance(event, RegisterConnectionCalled)
    refused = RegistrationError(cause="EDUPCONN", retry_after_ns=0, should_retry=True)
    server.answer_register(event.answer_id, refused)
    assert client.receive_data(server.data_to_send()) == [RegistrationReturned(result=refused)]
