"""The edge's HTTP/1 request parsing against h11, seeded with request-smuggling cases.

For every input, either both parsers refuse it, or both read the same requests (method,
target, version, headers, body) and agree where each one ends. Where the edge deliberately
refuses what h11 accepts, a documented entry of ``http1_models.REFUSALS`` must say so; the
edge never accepts what h11 refuses, but for the two ``LENIENCIES`` written down there. And the
edge's reading never depends on how the bytes were split across reads.
"""

from __future__ import annotations

from hypothesis import event, example, given
from hypothesis import strategies as st

from adit.edge.http1_request import HeadersTooLarge, RequestParser
from fuzz.budget import allocation_bounded, budget, cpu_bounded
from fuzz.http1_models import REFUSALS, End, Message, Reading, edge_reading, h11_reading
from fuzz.http2_wire import splits

HOST = b"Host: app.example.test\r\n"


def _post(framing: bytes, body: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST /upload " + version + b"\r\n" + HOST + framing + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"

# The smuggling cases and their neighbours, each a whole input.
SEEDS: dict[str, bytes] = {
    "plain": b"GET / HTTP/1.1\r\n" + HOST + b"\r\n",
    "cl": _post(b"Content-Length: 5\r\n", b"hello"),
    "chunked": _post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"),
    "cl.te": _post(b"Content-Length: 4\r\n" + CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"),
    "te.cl": _post(CHUNKED + b"Content-Length: 4\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
    "te xchunked": _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    "te leading space": _post(b"Transfer-Encoding:  chunked\r\n", b"0\r\n\r\n"),
    "te trailing space": _post(b"Transfer-Encoding: chunked \r\n", b"0\r\n\r\n"),
    "te tab": _post(b"Transfer-Encoding:\tchunked\r\n", b"0\r\n\r\n"),
    "te upper case": _post(b"Transfer-Encoding: CHUNKED\r\n", b"0\r\n\r\n"),
    "te chunked, identity": _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    "te identity, chunked": _post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"),
    "te gzip, chunked": _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
    "te twice": _post(CHUNKED + CHUNKED, b"0\r\n\r\n"),
    "te name space": _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    "te on http/1.0": _post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n", b"HTTP/1.0"),
    "cl twice": _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
    "cl list": _post(b"Content-Length: 5, 5\r\n", b"hello"),
    "cl conflicting": _post(b"Content-Length: 5\r\nContent-Length: 4\r\n", b"hello"),
    "cl plus": _post(b"Content-Length: +5\r\n", b"hello"),
    "cl minus": _post(b"Content-Length: -5\r\n", b"hello"),
    "cl leading zeros": _post(b"Content-Length: 005\r\n", b"hello"),
    "cl zeros": _post(b"Content-Length: 00\r\n", b""),
    "cl trailing space": _post(b"Content-Length: 5 \r\n", b"hello"),
    "cl overflow": _post(b"Content-Length: 99999999999999999999999\r\n", b"hello"),
    "cl hex": _post(b"Content-Length: 0x5\r\n", b"hello"),
    "chunk 0x5": _post(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk -5": _post(CHUNKED, b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk '5 '": _post(CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk overflow": _post(CHUNKED, b"10000000000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk 16 hex digits": _post(CHUNKED, b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk too long": _post(CHUNKED, b"5\r\nhelloXX\r\n0\r\n\r\n"),
    "chunk too short": _post(CHUNKED, b"5\r\nhell\r\n0\r\n\r\n"),
    "chunk extension": _post(CHUNKED, b"5;name=value\r\nhello\r\n0\r\n\r\n"),
    "chunk quoted extension": _post(CHUNKED, b'5;name="a b"\r\nhello\r\n0\r\n\r\n'),
    "chunk bare lf": _post(CHUNKED, b"5\nhello\n0\n\n"),
    "trailer": _post(CHUNKED, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    "trailer host": _post(CHUNKED, b"5\r\nhello\r\n0\r\nHost: other.example\r\n\r\n"),
    "trailer content-length": _post(CHUNKED, b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"),
    "trailer obs-fold": _post(CHUNKED, b"0\r\nX-T: a\r\n b\r\n\r\n"),
    "bare lf": b"GET / HTTP/1.1\nHost: app.example.test\n\n",
    "bare lf in headers": b"GET / HTTP/1.1\r\nHost: app.example.test\nX: y\r\n\r\n",
    "bare cr": b"GET / HTTP/1.1\r\nHost: app.example.test\rX: y\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + HOST + b"X-Folded: a\r\n b\r\n\r\n",
    "continuation first": b"GET / HTTP/1.1\r\n " + HOST + b"\r\n",
    "nul in value": b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n",
    "cr in value": b"GET / HTTP/1.1\r\n" + HOST + b"X: a\rb\r\n\r\n",
    "del in value": b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x7fb\r\n\r\n",
    "obs-text value": b"GET / HTTP/1.1\r\n" + HOST + b"X: \xe9t\xe9\r\n\r\n",
    "value trailing whitespace": b"GET / HTTP/1.1\r\n" + HOST + b"X: a  \t\r\n\r\n",
    "host trailing whitespace": b"GET / HTTP/1.1\r\nHost: app.example.test \r\n\r\n",
    "empty value": b"GET / HTTP/1.1\r\n" + HOST + b"X:\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\n" + HOST + b"Host: other.example\r\n\r\n",
    "absolute form": b"GET http://internal.local/x HTTP/1.1\r\n" + HOST + b"\r\n",
    "absolute form https": b"GET https://app.example.test/ HTTP/1.1\r\n" + HOST + b"\r\n",
    "double slash": b"GET //other HTTP/1.1\r\n" + HOST + b"\r\n",
    "dot segments": b"GET /x/../other HTTP/1.1\r\n" + HOST + b"\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n",
    "connect": b"CONNECT app.example.test:443 HTTP/1.1\r\nHost: app.example.test:443\r\n\r\nraw",
    "upgrade": b"GET /ws HTTP/1.1\r\n"
    + HOST
    + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw",
    "upgrade with body": b"GET /ws HTTP/1.1\r\n"
    + HOST
    + b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 4\r\n\r\nGET ",
    "unknown method": b"FOO / HTTP/1.1\r\n" + HOST + b"\r\n",
    "lower-case method": b"get / HTTP/1.1\r\n" + HOST + b"\r\n",
    "non-ascii target": b"GET /\xc3\xa9 HTTP/1.1\r\n" + HOST + b"\r\n",
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "http/1.0 keep-alive pipelined": b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"GET /b HTTP/1.0\r\n\r\n",
    "http/1.0 then more": b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
    "close then more": b"GET /a HTTP/1.1\r\n"
    + HOST
    + b"Connection: close\r\n\r\nGET /b HTTP/1.1\r\n"
    + HOST
    + b"\r\n",
    "http/0.9": b"GET /\r\n\r\n",
    "http/1.2": b"GET / HTTP/1.2\r\n" + HOST + b"\r\n",
    "http/2.0": b"GET / HTTP/2.0\r\n" + HOST + b"\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\n" + HOST + b"\r\nGET /b HTTP/1.1\r\n" + HOST + b"\r\n",
    "pipelined after a body": _post(b"Content-Length: 5\r\n", b"hello")
    + b"GET /b HTTP/1.1\r\n"
    + HOST
    + b"\r\n",
    "pipelined after chunks": _post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n")
    + b"GET /b HTTP/1.1\r\n"
    + HOST
    + b"\r\n",
    "smuggled in a body": _post(
        b"Content-Length: 43\r\n", b"GET /admin HTTP/1.1\r\n" + HOST + b"\r\n"
    ),
    "empty line first": b"\r\nGET / HTTP/1.1\r\n" + HOST + b"\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n",
    "space before version": b"GET /  HTTP/1.1\r\n" + HOST + b"\r\n",
}

# -- generated requests ------------------------------------------------------------------------

_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH"])
_ODD_METHODS = st.sampled_from([b"CONNECT", b"get", b"FOO", b"G\x00T", b""])
_TARGETS = st.sampled_from(
    [
        b"/",
        b"/a?b=c",
        b"http://internal.local/x",
        b"//other",
        b"/./other",
        b"/%6fther",
        b"*",
        b"app.example.test:443",
        b"/\xc3\xa9",
        b"/a b",
        b"/\x01",
        b"",
    ]
)
_VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10"]
)
_FIELD_NAMES = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"Upgrade",
        b"Expect",
        b"X-Forwarded-For",
        b"Transfer-Encoding ",
        b"Content-Length\t",
        b" Host",
        b"X@Y",
        b"",
    ]
)
_FIELD_VALUES = st.sampled_from(
    [
        b"app.example.test",
        b"5",
        b"0",
        b"+5",
        b"-5",
        b"05",
        b"5, 5",
        b"99999999999999999999",
        b"chunked",
        b"xchunked",
        b" chunked",
        b"chunked ",
        b"chunked, identity",
        b"gzip, chunked",
        b"CHUNKED",
        b"close",
        b"keep-alive",
        b"upgrade",
        b"Upgrade, keep-alive",
        b"websocket",
        b"100-continue",
        b"a\x00b",
        b"a\rb",
        b"a\x7fb",
        b"\xe9",
        b"a  ",
        b"",
    ]
)
_LINE_ENDS = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n"])
_SPACES = st.sampled_from([b" "] * 12 + [b"  ", b"\t"])
_CHUNK_SIZES = st.sampled_from(
    [b"0x5", b"-5", b"5 ", b"05", b"FFFFFFFFFFFFFFFFF5", b"5;a=b", b"5\t"]
)


@st.composite
def _chunked(draw: st.DrawFn, end: bytes) -> bytes:
    out = bytearray()
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=3)):
        size = b"%x" % len(chunk)
        if draw(st.integers(0, 9)) == 0:
            size = draw(_CHUNK_SIZES)
        out += size + end + chunk + draw(st.sampled_from([end, end, b"", b"XX" + end]))
    out += b"0" + end
    for name, value in draw(st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES), max_size=2)):
        out += name + b": " + value + end
    return bytes(out + end)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request built from parts, most of them well formed, some smuggling-shaped."""
    end = draw(_LINE_ENDS)
    method = draw(st.one_of(_METHODS, _METHODS, _METHODS, _ODD_METHODS))
    version = draw(st.one_of(st.just(b"HTTP/1.1"), st.just(b"HTTP/1.1"), _VERSIONS))
    line = method + draw(_SPACES) + draw(_TARGETS) + draw(_SPACES) + version + end
    fields = [(b"Host", b"app.example.test")] if draw(st.integers(0, 4)) else []
    fields += draw(st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES), max_size=4))
    framing = draw(st.integers(0, 3))
    body = b""
    if framing == 1:
        body = draw(st.binary(max_size=16))
        fields.append((b"Content-Length", b"%d" % len(body)))
    elif framing == 2:
        fields.append((b"Transfer-Encoding", b"chunked"))
        body = draw(_chunked(end))
    fields = draw(st.permutations(fields))
    head = bytearray(line)
    for name, value in fields:
        head += name + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + value + end
        if draw(st.integers(0, 29)) == 0:
            head += b" folded" + end  # obs-fold
    return bytes(head + end + body)


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    """One to three requests in a row, now and then with empty lines or junk between them."""
    parts = draw(
        st.lists(
            st.one_of(requests(), st.sampled_from(list(SEEDS.values()))), min_size=1, max_size=3
        )
    )
    joints = st.sampled_from([b""] * 8 + [b"\r\n", b"\n", b"x"])
    return b"".join(part + draw(joints) for part in parts)


# -- the property --------------------------------------------------------------------------------


def _compare(data: bytes, edge: Reading, reference: Reading) -> None:
    common = min(len(edge.messages), len(reference.messages))
    assert edge.messages[:common] == reference.messages[:common]
    if edge.end is End.REFUSED:
        if reference.progress() > edge.progress():
            _must_be_documented(edge, reference)
        return
    # The edge accepted everything it read: h11 must have read exactly the same.
    assert reference.end is edge.end, (edge, reference)
    assert edge.messages == reference.messages
    assert edge.partial == reference.partial
    if edge.end is End.SWITCHED:
        assert edge.after_switch == reference.after_switch


def _must_be_documented(edge: Reading, reference: Reading) -> None:
    """The edge refused a request h11 read further: one of the REFUSALS must cover it."""
    index = len(edge.messages)
    if index < len(reference.messages):
        raw: bytes = reference.raw[index]
        message: Message | None = reference.messages[index]
    else:
        raw, message = reference.rest, reference.partial
    for refusal in REFUSALS:
        if refusal.applies(raw, message):
            event(f"refused deliberately: {refusal.name}")
            return
    raise AssertionError(f"the edge refused, h11 accepted, and no REFUSALS entry says why: {raw!r}")


def _check(data: bytes, pieces: list[bytes]) -> None:
    with cpu_bounded(), allocation_bounded(len(data)):
        edge = edge_reading([data])
        split = edge_reading(pieces)
    assert split == edge, "the edge's reading depends on how the bytes were split"
    _compare(data, edge, h11_reading(data))


@budget(60)
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_seeds_read_as_h11_reads_them(name: str, draw: st.DataObject) -> None:
    data = SEEDS[name]
    _check(data, draw.draw(splits(data)))


def test_seeds_split_at_every_byte_boundary() -> None:
    for name, data in SEEDS.items():
        whole = edge_reading([data])
        for cut in range(1, len(data)):
            assert edge_reading([data[:cut], data[cut:]]) == whole, (name, cut)
        assert edge_reading([data[i : i + 1] for i in range(len(data))]) == whole, name


@budget(500)
@given(request_streams(), st.data())
# Found: llhttp read "CONNECT  HTTP/1.1" as an HTTP/0.9 CONNECT to "HTTP/1.1" and switched.
@example(b"CONNECT  HTTP/1.1\r\n\r\n", None)
# Found: an upgrade request with a body was passed on, then refused.
@example(SEEDS["upgrade with body"], None)
# The oracle's own mistakes, kept as examples: an Upgrade header without Connection: upgrade
# is no upgrade; empty lines after a request that closes are not data.
@example(b"GET / HTTP/1.1\r\n" + HOST + b"Upgrade: websocket\r\n\r\n", None)
@example(_post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n\r\n", b"HTTP/1.0"), None)
# A chunk size beyond 64 bits: llhttp refuses, h11 waits for exabytes.
@example(_post(CHUNKED, b"FFFFFFFFFFFFFFFFF5\r\n\x00\r\n0\r\n\r\n"), None)
# A Content-Length beyond 64 bits: the same.
@example(b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999999999999\r\n\r\n", None)
def test_generated_requests_read_as_h11_reads_them(data: bytes, draw: st.DataObject | None) -> None:
    _check(data, draw.draw(splits(data)) if draw is not None else [data])


def test_an_empty_read_changes_nothing() -> None:
    # Found: feeding b"" in a body made llhttp report an empty body piece, which reads as the
    # message's end.
    data = SEEDS["cl"]
    assert edge_reading([data[:-4], b"", b"", data[-4:]]) == edge_reading([data])


@budget(200)
@given(st.binary(max_size=120), st.data())
def test_any_bytes_read_as_h11_reads_them(data: bytes, draw: st.DataObject) -> None:
    _check(data, draw.draw(splits(data)))


# -- bounds --------------------------------------------------------------------------------------


@budget(20)
@given(st.integers(1, 2048))
def test_trailers_are_bounded_however_they_arrive(read_size: int) -> None:
    # Found: one endless trailer line was buffered by httptools, copied on every read
    # (20 MB in 4 KiB reads took 37 s of CPU) and never refused.
    parser = RequestParser()
    parser.feed(_post(CHUNKED, b"0\r\nX-Trailer: "))
    line = b"a" * read_size
    with cpu_bounded(), allocation_bounded(0, floor=8 << 20):
        try:
            for _ in range((1 << 20) // read_size + 1):
                parser.feed(line)
        except HeadersTooLarge:
            return
    raise AssertionError("a megabyte of trailer was taken")
