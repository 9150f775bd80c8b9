"""Credentials file, tunnel token and cert.pem: cloudflared's vectors, round-trips, errors."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.credentials import (
    CredentialsFileError,
    InvalidCredentialsJson,
    InvalidTunnelToken,
    OriginCert,
    OriginCertError,
    TunnelCredentials,
    credentials_from_json,
    credentials_to_json,
    decode_origin_cert,
    decode_tunnel_token,
    encode_origin_cert,
    encode_tunnel_token,
    find_credentials_file,
    load_credentials_file,
    read_origin_cert,
    write_credentials_file,
    write_origin_cert,
)

VECTOR = (
    '{"AccountTag": "0123456789abcdef0123456789abcdef", '
    '"TunnelSecret": "U1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1M=", '
    '"TunnelID": "cce48637-f5a9-4699-b732-a486cd66b001"}'
)

creds_strategy = st.builds(
    TunnelCredentials,
    account_tag=st.text(min_size=0, max_size=40),
    tunnel_secret=st.binary(min_size=0, max_size=64),
    tunnel_id=st.uuids(),
    endpoint=st.text(max_size=10),
    edge=st.lists(st.text(min_size=1, max_size=30), max_size=3).map(tuple),
    edge_ca_pem=st.text(max_size=200),
)


def test_cloudflared_vector_loads(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text(VECTOR)
    creds = load_credentials_file(path)
    assert creds.account_tag == "0123456789abcdef0123456789abcdef"
    assert creds.tunnel_secret == b"S" * 32
    assert creds.tunnel_id == uuid.UUID("cce48637-f5a9-4699-b732-a486cd66b001")
    assert creds.endpoint == ""
    assert creds.edge == ()


def test_keys_match_case_insensitively_and_unknown_keys_are_ignored() -> None:
    creds = credentials_from_json(
        '{"accounttag": "a", "TUNNELSECRET": "AAEC", "tunnelId": '
        '"cce48637-f5a9-4699-b732-a486cd66b001", "Other": 1, "Endpoint": null}'
    )
    assert creds.account_tag == "a"
    assert creds.tunnel_secret == b"\x00\x01\x02"
    assert creds.endpoint == ""


def test_secrets_are_not_in_repr() -> None:
    creds = credentials_from_json(VECTOR)
    assert "U1NT" not in repr(creds)
    assert "SSSS" not in repr(creds)
    cert = OriginCert("z", "a", "very-secret-token")
    assert "very-secret-token" not in repr(cert)


@given(creds_strategy)
def test_credentials_json_round_trip(creds: TunnelCredentials) -> None:
    assert credentials_from_json(credentials_to_json(creds)) == creds


def test_credentials_json_is_cloudflared_shape() -> None:
    creds = credentials_from_json(VECTOR)
    assert credentials_to_json(creds) == (
        '{"AccountTag":"0123456789abcdef0123456789abcdef",'
        '"TunnelSecret":"U1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1M=",'
        '"TunnelID":"cce48637-f5a9-4699-b732-a486cd66b001","Endpoint":""}'
    )


def test_adit_extras_are_extra_keys() -> None:
    creds = TunnelCredentials("a", b"s" * 32, uuid.uuid4(), edge=("e:7844",), edge_ca_pem="PEM")
    obj = json.loads(credentials_to_json(creds))
    assert obj["Edge"] == ["e:7844"]
    assert obj["EdgeCACert"] == "PEM"


def test_missing_file_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CredentialsFileError) as err:
        load_credentials_file(missing)
    assert str(err.value) == f"Tunnel credentials file '{missing}' doesn't exist or is not a file"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsFileError, match="doesn't exist or is not a file"):
        load_credentials_file(tmp_path)


def test_pem_given_message(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_text("-----BEGIN ARGO TUNNEL TOKEN-----\n")
    with pytest.raises(CredentialsFileError) as err:
        load_credentials_file(path)
    assert str(err.value).startswith(
        "The tunnel credentials file should be .json but you gave a .pem."
    )


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        '{"TunnelSecret": "not base64!"}',
        '{"TunnelID": "nope"}',
        '{"AccountTag": 5}',
    ],
)
def test_invalid_json_message(tmp_path: Path, body: str) -> None:
    path = tmp_path / "creds.json"
    path.write_text(body)
    with pytest.raises(InvalidCredentialsJson) as err:
        load_credentials_file(path)
    assert str(err.value) == "Invalid JSON when parsing tunnel credentials file"


def test_write_mode_0400_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    creds = credentials_from_json(VECTOR)
    write_credentials_file(path, creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert load_credentials_file(path) == creds
    with pytest.raises(CredentialsFileError) as err:
        write_credentials_file(path, creds)
    assert str(err.value) == f"{path} already exists"


@given(creds_strategy)
def test_token_round_trip(creds: TunnelCredentials) -> None:
    assert decode_tunnel_token(encode_tunnel_token(creds)) == creds


def test_token_without_extras_matches_cloudflared_bytes() -> None:
    creds = credentials_from_json(VECTOR)
    token = encode_tunnel_token(creds)
    assert base64.b64decode(token) == (
        b'{"a":"0123456789abcdef0123456789abcdef",'
        b'"s":"U1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1M=",'
        b'"t":"cce48637-f5a9-4699-b732-a486cd66b001"}'
    )


@pytest.mark.parametrize("token", ["", "!!!", base64.b64encode(b"[1]").decode(), "e30"])
def test_invalid_token_message(token: str) -> None:
    with pytest.raises(InvalidTunnelToken) as err:
        decode_tunnel_token(token)
    assert str(err.value) == "Provided Tunnel token is not valid."


cert_strategy = st.builds(
    OriginCert,
    zone_id=st.text(min_size=1, max_size=40),
    account_id=st.text(max_size=40),
    api_token=st.text(min_size=1, max_size=60),
    endpoint=st.text(alphabet="abcdefghij", max_size=5),
    api_url=st.text(max_size=40),
)


@given(cert_strategy)
def test_origin_cert_round_trip(cert: OriginCert) -> None:
    assert decode_origin_cert(encode_origin_cert(cert)) == cert


def test_origin_cert_with_ca_block(tmp_path: Path) -> None:
    from adit.edge.ca import EdgeCA

    ca = EdgeCA.generate()
    cert = OriginCert("z", "a", "tok", api_url="https://x", edge_ca_pem=ca.cert_pem)
    path = tmp_path / "sub" / "cert.pem"
    write_origin_cert(path, cert)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = read_origin_cert(path)
    assert loaded == cert


def test_origin_cert_cloudflared_layout() -> None:
    text = encode_origin_cert(OriginCert("z", "a", "t")).decode()
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN ARGO TUNNEL TOKEN-----"
    assert lines[-1] == "-----END ARGO TUNNEL TOKEN-----"
    body = base64.b64decode("".join(lines[1:-1]))
    assert body == b'{"zoneID":"z","accountID":"a","apiToken":"t"}'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "cannot decode empty certificate"),
        (b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n", "unknown block FOO in the certificate"),
        (b"garbage", "missing token in the certificate"),
    ],
)
def test_origin_cert_errors(data: bytes, message: str) -> None:
    with pytest.raises(OriginCertError) as err:
        decode_origin_cert(data)
    assert str(err.value) == message


def test_multiple_tokens_refused() -> None:
    block = encode_origin_cert(OriginCert("z", "a", "t"))
    with pytest.raises(OriginCertError, match="found multiple tokens in the certificate"):
        decode_origin_cert(block + block)


def test_credentials_search_next_to_cert_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tunnel_id = uuid.uuid4()
    assert find_credentials_file(tunnel_id, None) is None
    adit_dir = tmp_path / "home" / ".adit"
    adit_dir.mkdir(parents=True)
    (adit_dir / f"{tunnel_id}.json").write_text("{}")
    assert find_credentials_file(tunnel_id, None) == adit_dir / f"{tunnel_id}.json"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / f"{tunnel_id}.json").write_text("{}")
    assert find_credentials_file(tunnel_id, other / "cert.pem") == other / f"{tunnel_id}.json"
    assert os.path.basename(str(find_credentials_file(tunnel_id, None))) == f"{tunnel_id}.json"
