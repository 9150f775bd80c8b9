"""TLS 1.3 for the tunnel's QUIC: aioquic's handshake plus the X25519MLKEM768 hybrid key share.

Why it exists. cloudflared (Go crypto/tls, curve preferences from cloudflared
``crypto/curves.go``) offers ``supported_groups = [X25519MLKEM768, secp256r1]`` but a key share
for X25519MLKEM768 (0x11EC) only, expecting a server without it to answer with a
HelloRetryRequest. aioquic 1.7's TLS server cannot send one (``tls.Context._server_handle_hello``
fails with "No supported key share") and its client knows classical groups only. So the edge
must do the hybrid exchange itself, and the connector should offer it as cloudflared does.

The hybrid (draft-ietf-tls-ecdhe-mlkem; Go ``crypto/tls/key_schedule.go``): the client
share is an ML-KEM-768 encapsulation key (1184 B) ‖ an X25519 public value (32 B); the server
share is the ML-KEM ciphertext (1088 B) ‖ its X25519 public value (32 B); the shared secret fed
to the key schedule is the ML-KEM secret (32 B) ‖ the X25519 secret (32 B).

How, without copying aioquic's hello handlers (they build and hash the whole server flight in one
go) nor patching its module: the hybrid share's classical half is an ordinary X25519 value, so

* aioquic is handed a *stand-in* hello whose key share is that X25519 value, and does its own
  X25519 exchange and everything else (ALPN, transport parameters, certificate, Finished);
* the ML-KEM half is done here (encapsulate on the server, decapsulate on the client);
* aioquic derives the handshake secret from the stand-in transcript, then calls
  ``_setup_traffic_protection`` for the handshake keys (RFC 8446 §7.1: they are derived right
  after the ServerHello). That first call is intercepted: the key schedule is replaced by one
  built from the real ClientHello, the real ServerHello and ML-KEM ‖ X25519, before any key
  leaves the TLS layer, so every later secret (CertificateVerify, Finished, 1-RTT keys) follows
  the real transcript;
* the server swaps the stand-in ServerHello aioquic wrote for the real one; the client rewrites
  the ClientHello aioquic wrote (adding the hybrid share) and restarts its transcript.

Every internal this leans on is checked when the module is imported (:func:`_check_aioquic`),
and each handshake checks the interception really happened; a changed aioquic fails loudly.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import aioquic
from aioquic import tls
from aioquic._buffer import Buffer
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

__all__ = [
    "CLIENT_SHARE_SIZE",
    "SERVER_SHARE_SIZE",
    "X25519MLKEM768",
    "PostQuantum",
    "TunnelTlsContext",
    "group_name",
]

#: The hybrid group's code point (IANA TLS Supported Groups).
X25519MLKEM768 = 0x11EC
_ENCAPSULATION_KEY_SIZE = 1184
_CIPHERTEXT_SIZE = 1088
_X25519_SIZE = 32
#: Size of the client's and the server's X25519MLKEM768 key share.
CLIENT_SHARE_SIZE = _ENCAPSULATION_KEY_SIZE + _X25519_SIZE
SERVER_SHARE_SIZE = _CIPHERTEXT_SIZE + _X25519_SIZE

_GROUP_NAMES = {
    X25519MLKEM768: "X25519MLKEM768",
    0xFE32: "P256Kyber768Draft00",
    **{int(group): group.name.lower() for group in tls.Group},
}


def group_name(group: int) -> str:
    """``X25519MLKEM768 (0x11ec)``: a TLS group as error messages and logs show it."""
    return f"{_GROUP_NAMES.get(group, 'unknown')} ({group:#06x})"


def _group_names(groups: list[int]) -> str:
    return ", ".join(group_name(group) for group in groups) or "none"


class PostQuantum(enum.Enum):
    """Which key exchange a tunnel's TLS handshake may use (cloudflared's PostQuantum modes)."""

    #: Offer X25519MLKEM768 first and a classical group (x25519) too; accept either.
    PREFER = "prefer"
    #: X25519MLKEM768 only; a peer without it is refused with a reason naming the group.
    STRICT = "strict"
    #: Classical groups only (aioquic's own behaviour).
    OFF = "off"


@dataclass(slots=True)
class _HybridExchange:
    """One hybrid exchange between the stand-in hello and the key-schedule swap."""

    client_hello: bytes  # the real ClientHello, as on the wire
    kem_secret: bytes
    peer_x25519: bytes  # the peer's X25519 half of its hybrid share
    server_hello: bytes = b""  # client role: the real ServerHello
    ciphertext: bytes = b""  # server role: the ML-KEM ciphertext to send
    hello_buffer: Buffer | None = None  # server role: where aioquic writes the ServerHello
    hello_start: int = 0


_Hello = TypeVar("_Hello", tls.ClientHello, tls.ServerHello)


def _encode(push: Callable[[Buffer, _Hello], None], hello: _Hello, size: int) -> bytes:
    # A re-encoded hello is never longer than the one it came from plus the shares added here.
    buf = Buffer(capacity=size + CLIENT_SHARE_SIZE + 64)
    push(buf, hello)
    return buf.data


def _changed(what: str) -> tls.AlertInternalError:
    return tls.AlertInternalError(
        f"aioquic {aioquic.__version__} no longer behaves as adit.protocol.quic_tls expects: {what}"
    )


class TunnelTlsContext(tls.Context):
    """aioquic's TLS 1.3 context with the X25519MLKEM768 hybrid key share, both roles.

    aioquic builds its ``tls.Context`` inline in ``QuicConnection._initialize`` and then wires
    it (certificates, callbacks, transport parameters); :meth:`adopt` turns that configured
    instance into this class rather than duplicating the wiring. The offer a client makes is
    two overridable methods (:meth:`offered_key_shares`, :meth:`offered_groups`).
    """

    post_quantum: PostQuantum
    #: The group the handshake's key exchange used, once the ServerHello is through.
    key_exchange_group: int | None
    _hybrid: _HybridExchange | None
    _mlkem_key: mlkem.MLKEM768PrivateKey | None
    _real_client_hello: bytes

    @classmethod
    def adopt(cls, context: tls.Context, post_quantum: PostQuantum) -> TunnelTlsContext:
        """Make a freshly built aioquic context this class (same object, same state)."""
        if context.state not in (
            tls.State.CLIENT_HANDSHAKE_START,
            tls.State.SERVER_EXPECT_CLIENT_HELLO,
        ):
            raise ValueError("only a context whose handshake has not started can be adopted")
        context.__class__ = cls
        assert isinstance(context, cls)
        context.post_quantum = post_quantum
        context.key_exchange_group = None
        context._hybrid = None
        context._mlkem_key = None
        context._real_client_hello = b""
        return context

    def offered_key_shares(self) -> list[int]:
        """Groups a client sends key shares for (X25519MLKEM768 and/or x25519, nothing else):
        the hybrid, plus x25519 unless strict.

        Go sends both shares when X25519 is among its curve preferences and reuses one X25519
        key for the two (crypto/tls handshake_client.go, citing draft-ietf-tls-hybrid-design
        §3.2); cloudflared's own lists carry no X25519, but a classical share here lets a
        server without HelloRetryRequest, such as aioquic, answer.
        """
        if self.post_quantum is PostQuantum.STRICT:
            return [X25519MLKEM768]
        return [X25519MLKEM768, tls.Group.X25519]

    def offered_groups(self) -> list[int]:
        """The client's ``supported_groups``: exactly its key shares, since aioquic's client
        cannot answer a HelloRetryRequest for a group it has no share for."""
        return self.offered_key_shares()

    # client role

    def _client_send_hello(self, output_buf: Buffer) -> None:
        if self.post_quantum is PostQuantum.OFF:
            super()._client_send_hello(output_buf)
            return
        # Resumption would put a PSK binder over the stand-in hello; the connection refuses a
        # session ticket when post-quantum is on (TunnelQuicConnection.__init__).
        assert self.session_ticket is None
        start = output_buf.tell()
        # aioquic writes a ClientHello with one x25519 share; its key is the hybrid's X25519 half.
        groups, self._supported_groups = self._supported_groups, [tls.Group.X25519]
        try:
            super()._client_send_hello(output_buf)
        finally:
            self._supported_groups = groups
        if self._x25519_private_key is None:
            raise _changed("the ClientHello was written without an X25519 key")
        x_public = self._x25519_private_key.public_key().public_bytes_raw()
        self._mlkem_key = mlkem.MLKEM768PrivateKey.generate()
        shares = {
            X25519MLKEM768: self._mlkem_key.public_key().public_bytes_raw() + x_public,
            tls.Group.X25519: x_public,
        }
        offered = self.offered_key_shares()
        if not set(offered) <= shares.keys():
            raise ValueError(f"cannot offer key shares for {_group_names(offered)}")
        hello = tls.pull_client_hello(Buffer(data=output_buf.data_slice(start, output_buf.tell())))
        hello.key_share = [(group, shares[group]) for group in offered]
        hello.supported_groups = self.offered_groups()
        output_buf.seek(start)
        tls.push_client_hello(output_buf, hello)
        self._real_client_hello = output_buf.data_slice(start, output_buf.tell())
        # aioquic hashed the stand-in. Without a PSK its transcript is exactly extract(None) then
        # the ClientHello (tls.py _client_send_hello), so restart it from the real one.
        proxy = tls.KeyScheduleProxy(self._cipher_suites)
        proxy.extract(None)
        proxy.update_hash(self._real_client_hello)
        self._key_schedule_proxy = proxy

    def _client_handle_hello(self, input_buf: Buffer, output_buf: Buffer) -> None:
        server_hello = input_buf.data_slice(0, input_buf.capacity)
        hello = tls.pull_server_hello(Buffer(data=server_hello))
        group = hello.key_share[0] if hello.key_share is not None else None
        if group == X25519MLKEM768 and self._mlkem_key is not None:
            self._hybrid = self._client_hybrid(hello, server_hello)
            stand_in = _encode(tls.push_server_hello, hello, len(server_hello))
            super()._client_handle_hello(Buffer(data=stand_in), output_buf)
            self._check_swapped()
            input_buf.seek(input_buf.capacity)  # aioquic asserts the real message was read
        elif self.post_quantum is PostQuantum.STRICT and group is not None:
            raise tls.AlertIllegalParameter(
                f"the server chose {group_name(group)}, but post-quantum strict mode offered "
                f"only {group_name(X25519MLKEM768)}"
            )
        else:
            super()._client_handle_hello(input_buf, output_buf)
        self.key_exchange_group = group

    def _client_hybrid(self, hello: tls.ServerHello, server_hello: bytes) -> _HybridExchange:
        assert hello.key_share is not None and self._mlkem_key is not None
        share = hello.key_share[1]
        if len(share) != SERVER_SHARE_SIZE:
            raise tls.AlertIllegalParameter(
                f"the server's X25519MLKEM768 key share is {len(share)} bytes, "
                f"not {SERVER_SHARE_SIZE}"
            )
        try:
            kem_secret = self._mlkem_key.decapsulate(share[:_CIPHERTEXT_SIZE])
        except ValueError as exc:
            raise tls.AlertIllegalParameter("invalid ML-KEM-768 ciphertext") from exc
        peer_x25519 = share[_CIPHERTEXT_SIZE:]
        hello.key_share = (tls.Group.X25519, peer_x25519)
        return _HybridExchange(
            client_hello=self._real_client_hello,
            kem_secret=kem_secret,
            peer_x25519=peer_x25519,
            server_hello=server_hello,
        )

    # server role

    def _server_handle_hello(
        self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer
    ) -> None:
        client_hello = input_buf.data_slice(0, input_buf.capacity)
        hello = tls.pull_client_hello(Buffer(data=client_hello))
        shares = dict(hello.key_share or [])
        start = initial_buf.tell()
        if X25519MLKEM768 in shares and self.post_quantum is not PostQuantum.OFF:
            self._hybrid = self._server_hybrid(client_hello, shares[X25519MLKEM768])
            self._hybrid.hello_buffer, self._hybrid.hello_start = initial_buf, start
            # The stand-in offers no PSK: resuming would hash a binder over it. A server may
            # always ignore an offered PSK (RFC 8446 §4.2.11).
            hello.key_share = [(tls.Group.X25519, self._hybrid.peer_x25519)]
            hello.pre_shared_key, hello.early_data = None, False
            stand_in = _encode(tls.push_client_hello, hello, len(client_hello))
            super()._server_handle_hello(Buffer(data=stand_in), initial_buf, handshake_buf)
            self._check_swapped()
            input_buf.seek(input_buf.capacity)  # aioquic asserts the real message was read
            self.key_exchange_group = X25519MLKEM768
            return
        self._refuse_unusable_shares(hello)
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)
        reply = tls.pull_server_hello(
            Buffer(data=initial_buf.data_slice(start, initial_buf.tell()))
        )
        self.key_exchange_group = reply.key_share[0] if reply.key_share is not None else None

    def _refuse_unusable_shares(self, hello: tls.ClientHello) -> None:
        """Refuse with a reason naming the groups, where aioquic would only say "No supported
        key share" (or, in strict mode, accept a classical one)."""
        if hello.key_share is None:
            return  # aioquic refuses with missing_extension
        offered = [group for group, _ in hello.key_share]
        if self.post_quantum is PostQuantum.STRICT:
            raise tls.AlertHandshakeFailure(
                f"post-quantum strict mode requires a {group_name(X25519MLKEM768)} key share; "
                f"the client offered {_group_names(offered)}"
            )
        if not any(group in self._supported_groups for group in offered):
            accepted = [int(group) for group in self._supported_groups]
            if self.post_quantum is PostQuantum.PREFER:
                accepted.insert(0, X25519MLKEM768)
            raise tls.AlertHandshakeFailure(
                f"no supported key share: the client offered {_group_names(offered)}; "
                f"this server accepts {_group_names(accepted)}"
            )

    def _server_hybrid(self, client_hello: bytes, share: bytes) -> _HybridExchange:
        if len(share) != CLIENT_SHARE_SIZE:
            raise tls.AlertIllegalParameter(
                f"the client's X25519MLKEM768 key share is {len(share)} bytes, "
                f"not {CLIENT_SHARE_SIZE}"
            )
        try:
            key = mlkem.MLKEM768PublicKey.from_public_bytes(share[:_ENCAPSULATION_KEY_SIZE])
            kem_secret, ciphertext = key.encapsulate()
        except ValueError as exc:
            raise tls.AlertIllegalParameter("invalid ML-KEM-768 encapsulation key") from exc
        return _HybridExchange(
            client_hello=client_hello,
            kem_secret=kem_secret,
            peer_x25519=share[_ENCAPSULATION_KEY_SIZE:],
            ciphertext=ciphertext,
        )

    def _swap_server_hello(self, hybrid: _HybridExchange) -> bytes:
        """Replace the stand-in ServerHello aioquic wrote with the real one; return it."""
        buf = hybrid.hello_buffer
        assert buf is not None and self._x25519_private_key is not None
        hello = tls.pull_server_hello(Buffer(data=buf.data_slice(hybrid.hello_start, buf.tell())))
        x_public = self._x25519_private_key.public_key().public_bytes_raw()
        if hello.key_share != (tls.Group.X25519, x_public):
            raise _changed("the ServerHello does not carry the stand-in X25519 key share")
        hello.key_share = (X25519MLKEM768, hybrid.ciphertext + x_public)
        buf.seek(hybrid.hello_start)
        tls.push_server_hello(buf, hello)
        return buf.data_slice(hybrid.hello_start, buf.tell())

    # both roles

    def _setup_traffic_protection(
        self, direction: tls.Direction, epoch: tls.Epoch, label: bytes
    ) -> None:
        hybrid, self._hybrid = self._hybrid, None
        if hybrid is not None:
            self._install_hybrid_key_schedule(hybrid, epoch)
        super()._setup_traffic_protection(direction, epoch, label)

    def _install_hybrid_key_schedule(self, hybrid: _HybridExchange, epoch: tls.Epoch) -> None:
        """Rebuild the key schedule aioquic derived from the stand-in: same steps as aioquic's
        (extract(None), ClientHello, ServerHello, extract(shared secret)) with the real hellos
        and the hybrid secret, ML-KEM first for this group (draft-ietf-tls-ecdhe-mlkem; Go
        crypto/tls key_schedule.go)."""
        stand_in = self.key_schedule
        if epoch is not tls.Epoch.HANDSHAKE or stand_in is None or stand_in.generation != 2:
            raise _changed("the handshake keys are not derived right after the ServerHello")
        if self._x25519_private_key is None:
            raise _changed("the X25519 exchange left no private key")
        server_hello = hybrid.server_hello if self._is_client else self._swap_server_hello(hybrid)
        peer = x25519.X25519PublicKey.from_public_bytes(hybrid.peer_x25519)
        schedule = tls.KeySchedule(stand_in.cipher_suite)
        schedule.extract(None)
        schedule.update_hash(hybrid.client_hello)
        schedule.update_hash(server_hello)
        schedule.extract(hybrid.kem_secret + self._x25519_private_key.exchange(peer))
        self.key_schedule = schedule

    def _check_swapped(self) -> None:
        if self._hybrid is not None:
            self._hybrid = None
            raise _changed("the hybrid key schedule was never installed")


def _check_aioquic() -> None:
    """Fail the import, with every difference listed, if aioquic is not the one hooked here."""
    problems: list[str] = []
    if not aioquic.__version__.startswith("1.7."):
        problems.append(f"version {aioquic.__version__}, not 1.7.x")
    expected = {
        "_client_send_hello": ["self", "output_buf"],
        "_client_handle_hello": ["self", "input_buf", "output_buf"],
        "_server_handle_hello": ["self", "input_buf", "initial_buf", "handshake_buf"],
        "_setup_traffic_protection": ["self", "direction", "epoch", "label"],
    }
    for name, parameters in expected.items():
        method = getattr(tls.Context, name, None)
        if method is None or list(inspect.signature(method).parameters) != parameters:
            problems.append(f"tls.Context.{name} is not ({', '.join(parameters)})")
    probe = tls.Context(is_client=True)
    for attribute in (
        "_supported_groups",
        "_x25519_private_key",
        "_key_schedule_proxy",
        "_cipher_suites",
        "key_schedule",
        "session_ticket",
        "_is_client",
    ):
        if not hasattr(probe, attribute):
            problems.append(f"tls.Context has no {attribute}")
    schedule = tls.KeySchedule(tls.CipherSuite.AES_128_GCM_SHA256)
    if not all(hasattr(schedule, name) for name in ("generation", "cipher_suite", "update_hash")):
        problems.append("tls.KeySchedule lacks generation, cipher_suite or update_hash")
    for name in (
        "pull_client_hello",
        "push_client_hello",
        "pull_server_hello",
        "push_server_hello",
        "KeyScheduleProxy",
    ):
        if not callable(getattr(tls, name, None)):
            problems.append(f"tls.{name} is missing")
    if problems:
        raise ImportError(
            "adit.protocol.quic_tls hooks aioquic 1.7 internals that this aioquic lacks: "
            + "; ".join(problems)
        )


_check_aioquic()
