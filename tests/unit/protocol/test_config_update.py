"""The HTTP/2 configuration push's bodies (PROTOCOL.md §4.6.1)."""

from __future__ import annotations

import json

import pytest

from adit.protocol.config_update import (
    UNSAID,
    ConfigUpdateError,
    decode_answer,
    decode_update,
    encode_answer,
    encode_update,
)


def test_a_push_round_trips() -> None:
    body = encode_update(7, b'{"ingress":[{"service":"http_status:404"}]}')
    assert json.loads(body) == {
        "version": 7,
        "config": {"ingress": [{"service": "http_status:404"}]},
    }
    version, config = decode_update(body)
    assert version == 7
    assert json.loads(config) == {"ingress": [{"service": "http_status:404"}]}


@pytest.mark.parametrize(
    "body", [b"", b"[]", b'{"config":{}}', b'{"version":"7"}', b'{"version":4294967296}']
)
def test_a_malformed_push_is_refused(body: bytes) -> None:
    with pytest.raises(ConfigUpdateError):
        decode_update(body)


def test_answers_as_cloudflared_and_adit_write_them() -> None:
    assert decode_answer(encode_answer(3, None)) == (3, None)
    assert decode_answer(encode_answer(-1, "this connector is locally managed")) == (
        -1,
        "this connector is locally managed",
    )
    # cloudflared's Go error marshals as {}: a rejection that does not say why.
    assert decode_answer(b'{"lastAppliedVersion":2,"err":{}}') == (2, UNSAID)
    with pytest.raises(ConfigUpdateError):
        decode_answer(b"not json")
    with pytest.raises(ConfigUpdateError):
        encode_update(1 << 31, b"{}")
