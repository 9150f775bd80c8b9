"""Cap'n Proto messages as test data: the golden control-stream messages and strategies that
corrupt them where a decoder is weakest, in the pointers.

A byte flip rarely makes a *meaningful* lie (a list of half a billion empty structs needs three
particular bytes changed at once); rewriting a whole word as a pointer of a drawn kind, offset
and size does, so the structured strategy finds amplification and bounds bugs that flips miss.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import strategies as st

__all__ = ["CFD_STREAM", "EDGE_STREAM", "MESSAGES", "RETURNS", "corrupted", "framed"]

_CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "rpc_control_stream"
CFD_STREAM = (_CORPUS / "rpc_cloudflared_to_edge.bin").read_bytes()
EDGE_STREAM = (_CORPUS / "rpc_edge_to_cloudflared.bin").read_bytes()
MESSAGES = [path.read_bytes() for path in sorted(_CORPUS.glob("[0-9]*.bin"))]
RETURNS = [path.read_bytes() for path in sorted(_CORPUS.glob("[0-9]*-edge-return-*.bin"))]


def framed(body: bytes) -> bytes:
    """``body`` as a one-segment framed message (padded to whole words)."""
    body += b"\0" * (-len(body) % 8)
    return struct.pack("<II", 0, len(body) // 8) + body


@st.composite
def _pointer(draw: st.DrawFn) -> bytes:
    offset = draw(st.one_of(st.integers(-4, 8), st.integers(-(2**29), 2**29 - 1)))
    kind = draw(st.integers(0, 3))
    if kind == 0:  # struct: data words, pointer count
        sizes = st.one_of(st.integers(0, 3), st.integers(0, 2**16 - 1))
        return struct.pack("<iHH", offset << 2, draw(sizes), draw(sizes))
    if kind == 1:  # list: element size, element (or, composite, word) count
        count = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**29 - 1)))
        return struct.pack("<iI", (offset << 2) | 1, draw(st.integers(0, 7)) | (count << 3))
    if kind == 2:  # far pointer
        landing = ((offset % 2**29) << 3) | 2
        return struct.pack("<II", landing, draw(st.integers(0, 2**32 - 1)))
    return struct.pack("<II", 3, draw(st.integers(0, 2**32 - 1)))  # capability


@st.composite
def corrupted(draw: st.DrawFn, messages: list[bytes]) -> bytes:
    """A golden message with a few words rewritten as drawn pointers and a few bytes flipped
    (the framing header included, now and then)."""
    data = bytearray(draw(st.sampled_from(messages)))
    words = len(data) // 8
    for _ in range(draw(st.integers(0, 3))):
        at = 8 * draw(st.integers(1, words - 1))
        data[at : at + 8] = draw(_pointer())
    for _ in range(draw(st.integers(0, 3))):
        lowest = 0 if draw(st.integers(0, 9)) == 0 else 8
        data[draw(st.integers(lowest, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)
