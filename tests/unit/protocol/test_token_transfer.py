"""The sealed hand-over of an Access token to ``adit access login``: only the key that asked
opens it, and nothing tampered with opens at all."""

from __future__ import annotations

import json

import pytest

from adit.protocol.token_transfer import (
    TransferError,
    new_key,
    open_box,
    parse_public_key,
    public_key_text,
    seal,
)


def test_the_box_opens_with_the_asking_key_only() -> None:
    key = new_key()
    text = public_key_text(key)
    assert len(text) == 43
    box = seal(parse_public_key(text), "header.payload.signature")
    assert b"payload" not in box
    assert open_box(key, box) == "header.payload.signature"
    with pytest.raises(TransferError, match="does not open with this login's key"):
        open_box(new_key(), box)


def test_tampered_or_garbled_boxes_and_keys_are_refused() -> None:
    key = new_key()
    box = json.loads(seal(parse_public_key(public_key_text(key)), "token"))
    flipped = box["ct"][:-2] + ("A" if box["ct"][-2] != "A" else "B") + box["ct"][-1]
    with pytest.raises(TransferError):
        open_box(key, json.dumps({**box, "ct": flipped}).encode())
    with pytest.raises(TransferError, match="not a sealed token"):
        open_box(key, b"<html>")
    for bad in ("", "short", "!" * 43, public_key_text(key) + "A"):
        with pytest.raises(TransferError):
            parse_public_key(bad)
