"""cloudflared's protocol selection and fallback, one rule per test (adit.workers.protocol_choice).

The rule numbers are the module docstring's. Defaults as cloudflared's: --retries 5,
--max-edge-addr-retries 8.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.workers import protocol_choice
from adit.workers.protocol_choice import (
    QUIC_HANDSHAKE_IDLE_TIMEOUT,
    QUIC_HANDSHAKE_TIMEOUT,
    UDP_BLOCKED_WARNING,
    Choice,
    ChoiceState,
    ConnectionProtocol,
    Outcome,
    Protocol,
    ProtocolChoiceError,
    ProtocolSelector,
    Verdict,
    quic_handshake_deadline,
    quic_handshake_expiry,
)

QUIC, HTTP2 = Protocol.QUIC, Protocol.HTTP2
FALLING_BACK = "Switching to fallback protocol http2"
BACK_TO_QUIC = "Changing protocol to quic"


def _selector(setting: str = "auto", **counts: int) -> ProtocolSelector:
    return ProtocolSelector(setting, **counts)


def _conn(setting: str = "auto", index: int = 0, **counts: int) -> ConnectionProtocol:
    return _selector(setting, **counts).connection(index)


def _fail(conn: ConnectionProtocol, outcome: Outcome, times: int = 1) -> list[Choice]:
    """``times`` attempts ending in ``outcome``, each followed by the next dial's choice."""
    choices = []
    for _ in range(times):
        conn.record(outcome)
        choices.append(conn.choose(0.0))
    return choices


def _fall_back(conn: ConnectionProtocol) -> None:
    """Five failures: the fifth reaches --retries and switches (rule 7)."""
    assert _fail(conn, Outcome.FAILED, 5)[-1].reason == FALLING_BACK


# -- the protocols and the settings (rules 1, 2) -------------------------------------------------


def test_quic_falls_back_to_http2_and_http2_to_nothing() -> None:
    assert (QUIC.fallback, HTTP2.fallback) == (HTTP2, None)
    assert (QUIC.server_name, HTTP2.server_name) == ("quic.cftunnel.com", "h2.cftunnel.com")


def test_auto_starts_with_quic_and_falls_back_to_http2() -> None:
    selector = _selector("auto")
    assert (selector.current, selector.fallback) == (QUIC, HTTP2)
    conn = selector.connection(0)
    assert (conn.choose(0.0), conn.state) == (Choice(QUIC), ChoiceState.PREFERRED)


@pytest.mark.parametrize(("setting", "protocol"), [("quic", QUIC), ("http2", HTTP2)])
def test_a_named_protocol_is_static(setting: str, protocol: Protocol) -> None:
    selector = _selector(setting)
    assert (selector.current, selector.fallback) == (protocol, None)
    assert selector.connection(0).state is ChoiceState.STATIC


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown protocol setting 'h2mux'"):
        ProtocolSelector("h2mux")


# -- rules 4 and 7: --retries failures fall back ---------------------------------------------


def test_the_fifth_failure_falls_back_not_the_fourth() -> None:
    conn = _conn()
    choices = _fail(conn, Outcome.FAILED, 5)
    assert choices[:4] == [Choice(QUIC)] * 4
    assert choices[4] == Choice(HTTP2, FALLING_BACK, None)
    assert (conn.protocol, conn.state, conn.retries) == (HTTP2, ChoiceState.FELL_BACK, 0)


def test_retries_follow_the_flag() -> None:
    assert _fail(_conn(retries=2), Outcome.FAILED, 2) == [Choice(QUIC), Choice(HTTP2, FALLING_BACK)]
    # --retries 0: the count is always at its maximum.
    assert _fail(_conn(retries=0), Outcome.FAILED) == [Choice(HTTP2, FALLING_BACK)]


def test_a_registration_starts_the_count_again() -> None:
    conn = _conn()
    _fall_back(conn)
    _fail(conn, Outcome.FAILED, 3)
    conn.record(Outcome.REGISTERED)  # over http2, so nothing holds it on QUIC (rule 6)
    assert _fail(conn, Outcome.FAILED) == [Choice(QUIC, BACK_TO_QUIC)]
    assert _fail(conn, Outcome.FAILED, 3) == [Choice(QUIC)] * 3
    assert _fail(conn, Outcome.FAILED) == [Choice(HTTP2, FALLING_BACK)]


def test_failures_that_cannot_switch_still_count_towards_retries() -> None:
    conn = _conn()
    assert _fail(conn, Outcome.DUPLICATE, 4) == [Choice(QUIC)] * 4
    assert _fail(conn, Outcome.FAILED) == [Choice(HTTP2, FALLING_BACK)]


# -- rule 7: QUIC that looks broken falls back at once ----------------------------------------


@pytest.mark.parametrize("outcome", [Outcome.QUIC_IDLE_TIMEOUT, Outcome.QUIC_NOT_PERMITTED])
def test_broken_quic_after_the_dial_falls_back_at_the_first_failure(outcome: Outcome) -> None:
    assert _fail(_conn(), outcome) == [Choice(HTTP2, FALLING_BACK, UDP_BLOCKED_WARNING)]


def test_static_quic_warns_about_udp_only_once_retries_are_used_up() -> None:
    conn = _conn("quic")
    assert _fail(conn, Outcome.QUIC_IDLE_TIMEOUT, 5) == [Choice(QUIC)] * 4 + [
        Choice(QUIC, None, UDP_BLOCKED_WARNING)
    ]
    assert conn.state is ChoiceState.STATIC


# -- rule 5: dial errors count towards --max-edge-addr-retries -----------------------------


def test_the_ninth_quic_handshake_timeout_falls_back_with_the_warning() -> None:
    conn = _conn()
    choices = _fail(conn, Outcome.QUIC_HANDSHAKE_IDLE, 9)
    assert choices[:8] == [Choice(QUIC)] * 8
    assert choices[8] == Choice(HTTP2, FALLING_BACK, UDP_BLOCKED_WARNING)


def test_dial_errors_follow_the_flag() -> None:
    conn = _conn(max_edge_addr_retries=2)
    assert _fail(conn, Outcome.QUIC_DIAL_NOT_PERMITTED, 3)[-1].reason == FALLING_BACK
    assert _fail(_conn(max_edge_addr_retries=0), Outcome.QUIC_HANDSHAKE_IDLE)[-1].protocol is HTTP2


def test_a_plain_dial_error_falls_back_only_with_retries_used_up() -> None:
    # The 9th dial error may switch; with --retries 5 the count is at its cap by then.
    assert _fail(_conn(), Outcome.DIAL_FAILED, 9)[-1] == Choice(HTTP2, FALLING_BACK)
    # With --retries 20 it is not, and a dial error is no sign of broken QUIC.
    assert _fail(_conn(retries=20), Outcome.DIAL_FAILED, 9)[-1] == Choice(QUIC)


def test_success_does_not_reset_the_dial_error_count() -> None:
    conn = _conn()
    _fail(conn, Outcome.QUIC_HANDSHAKE_IDLE, 5)
    _fail(conn, Outcome.FAILED)  # retries at 5 by now: falls back
    conn.record(Outcome.REGISTERED)
    assert _fail(conn, Outcome.DIAL_FAILED, 3) == [Choice(HTTP2)] * 3
    # The 9th dial error in all may change the protocol: back to QUIC.
    assert _fail(conn, Outcome.DIAL_FAILED) == [Choice(QUIC, BACK_TO_QUIC)]


def test_the_dial_error_count_starts_again_once_it_fired() -> None:
    conn = _conn(retries=20)
    _fail(conn, Outcome.DIAL_FAILED, 9)  # fired on the 9th, but no switch (not broken)
    assert _fail(conn, Outcome.QUIC_HANDSHAKE_IDLE, 8) == [Choice(QUIC)] * 8
    assert _fail(conn, Outcome.QUIC_HANDSHAKE_IDLE)[-1].reason == FALLING_BACK


@pytest.mark.parametrize("outcome", [Outcome.REFUSED_FOR_GOOD, Outcome.DUPLICATE])
def test_what_cloudflared_does_not_retry_never_switches(outcome: Outcome) -> None:
    assert _fail(_conn(retries=0), outcome, 10) == [Choice(QUIC)] * 10


# -- rule 6: a connection registered over the current protocol holds everyone -----------------


def test_no_fallback_while_another_connection_is_registered_over_quic() -> None:
    selector = _selector()
    selector.registered(1, QUIC)
    conn = selector.connection(0)
    assert _fail(conn, Outcome.FAILED, 6) == [Choice(QUIC)] * 6
    assert _fail(conn, Outcome.QUIC_IDLE_TIMEOUT) == [Choice(QUIC)]


def test_only_the_latest_registration_of_each_index_counts() -> None:
    selector = _selector()
    selector.registered(1, QUIC)
    selector.registered(1, HTTP2)
    assert _fail(selector.connection(0), Outcome.QUIC_IDLE_TIMEOUT)[-1].reason == FALLING_BACK


def test_the_guard_is_read_when_the_next_dial_is_chosen() -> None:
    selector = _selector()
    conn = selector.connection(0)
    _fail(conn, Outcome.FAILED, 4)
    conn.record(Outcome.FAILED)
    selector.registered(2, QUIC)  # during the backoff
    assert conn.choose(1.0) == Choice(QUIC)


def test_a_registration_is_noted_in_the_selector() -> None:
    selector = _selector()
    selector.connection(3).record(Outcome.REGISTERED)
    assert selector.registered_with(3) is QUIC
    assert selector.has_connected_with(QUIC)


# -- after the fallback (rules 7, 8) ---------------------------------------------------------


def test_a_connection_in_fallback_keeps_http2_until_it_registers() -> None:
    conn = _conn()
    _fall_back(conn)
    http2_failures = [Outcome.DIAL_FAILED, Outcome.FAILED, Outcome.DUPLICATE]
    for outcome in [*http2_failures, Outcome.REFUSED_FOR_GOOD]:
        assert _fail(conn, outcome, 10) == [Choice(HTTP2)] * 10
    assert conn.state is ChoiceState.FELL_BACK


def test_a_connection_registered_over_quic_never_falls_back() -> None:
    # Its own registration is a connection registered over the current protocol (rule 6).
    conn = _conn()
    conn.record(Outcome.REGISTERED)
    assert _fail(conn, Outcome.FAILED, 10) == [Choice(QUIC)] * 10
    assert _fail(conn, Outcome.QUIC_IDLE_TIMEOUT, 10) == [Choice(QUIC)] * 10


def test_registered_over_http2_it_returns_to_quic_at_the_next_failure() -> None:
    conn = _conn()
    _fall_back(conn)
    conn.record(Outcome.REGISTERED)
    settled = conn.state
    assert _fail(conn, Outcome.FAILED) == [Choice(QUIC, BACK_TO_QUIC)]
    assert (settled, conn.state) == (ChoiceState.SETTLED, ChoiceState.PREFERRED)
    # It can fall back again; the change back kept the count (one failure so far).
    assert _fail(conn, Outcome.FAILED, 4)[-1] == Choice(HTTP2, FALLING_BACK)


def test_registered_over_http2_it_stays_while_another_is_on_quic() -> None:
    selector = _selector()
    conn = selector.connection(0)
    _fall_back(conn)
    conn.record(Outcome.REGISTERED)
    selector.registered(1, QUIC)
    assert _fail(conn, Outcome.FAILED, 3) == [Choice(HTTP2)] * 3


def test_registered_over_http2_it_stays_when_retries_are_used_up_at_once() -> None:
    # With --retries 1 the first failure is at the cap: the "fall back" branch, already there.
    conn = _conn(retries=1)
    _fail(conn, Outcome.FAILED)
    conn.record(Outcome.REGISTERED)
    assert _fail(conn, Outcome.FAILED, 3) == [Choice(HTTP2)] * 3
    assert conn.state is ChoiceState.SETTLED


def test_registered_over_http2_a_dial_error_below_the_count_keeps_it() -> None:
    conn = _conn()
    _fall_back(conn)
    conn.record(Outcome.REGISTERED)
    assert _fail(conn, Outcome.DIAL_FAILED) == [Choice(HTTP2)]


def test_the_change_is_stamped_with_the_time_of_the_choice() -> None:
    conn = _conn()
    _fail(conn, Outcome.FAILED, 4)
    conn.record(Outcome.FAILED)
    assert conn.changed_at is None
    conn.choose(42.5)
    assert conn.changed_at == 42.5


def test_only_the_latest_failure_is_decided() -> None:
    conn = _conn()
    conn.record(Outcome.QUIC_IDLE_TIMEOUT)
    conn.record(Outcome.DUPLICATE)
    assert conn.choose(0.0) == Choice(QUIC)


# -- rule 3: per index, and the others start like connection 0 ---------------------------


def test_each_index_keeps_its_own_protocol() -> None:
    selector = _selector()
    zero, one = selector.connection(0), selector.connection(1)
    one.choose(0.0)
    _fall_back(zero)
    assert (one.choose(0.0), one.retries) == (Choice(QUIC), 0)


def test_a_connection_starts_with_the_fallback_connection_zero_registered_over() -> None:
    selector = _selector()
    zero = selector.connection(0)
    _fall_back(zero)
    zero.record(Outcome.REGISTERED)
    one = selector.connection(1)
    assert (one.choose(0.0), one.state) == (Choice(HTTP2), ChoiceState.SETTLED)
    # Not "in fallback": its first failure that may switch takes the current protocol again.
    assert _fail(one, Outcome.FAILED) == [Choice(QUIC, BACK_TO_QUIC)]


def test_connection_zero_itself_starts_with_the_current_protocol() -> None:
    selector = _selector()
    selector.registered(0, HTTP2)  # an earlier life of this index
    assert selector.connection(0).choose(0.0) == Choice(QUIC)


# -- the table -----------------------------------------------------------------------------


def test_the_table_has_every_pair() -> None:
    pairs = {(s, v) for s in ChoiceState for v in Verdict}
    assert set(protocol_choice._TRANSITIONS) == pairs


def test_a_pair_missing_from_the_table_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = _conn()
    monkeypatch.delitem(protocol_choice._TRANSITIONS, (ChoiceState.PREFERRED, Verdict.REGISTERED))
    with pytest.raises(ProtocolChoiceError, match="no transition"):
        conn.record(Outcome.REGISTERED)


_STATE_PROTOCOL = {
    ChoiceState.PREFERRED: QUIC,
    ChoiceState.FELL_BACK: HTTP2,
    ChoiceState.SETTLED: HTTP2,
}


@given(
    st.sampled_from(["auto", "quic", "http2"]),
    st.lists(st.sampled_from(list(Outcome)), max_size=60),
    st.integers(0, 6),
    st.integers(0, 9),
)
def test_any_sequence_keeps_the_invariants(
    setting: str, outcomes: list[Outcome], retries: int, addr_retries: int
) -> None:
    conn = _conn(setting, retries=retries, max_edge_addr_retries=addr_retries)
    first = conn.choose(0.0).protocol
    for outcome in outcomes:
        before = conn.protocol
        conn.record(outcome)
        choice = conn.choose(0.0)
        assert choice.protocol is conn.protocol
        assert (choice.reason is not None) == (choice.protocol is not before)
        assert 0 <= conn.retries <= retries
        if setting != "auto":
            assert (conn.state, conn.protocol) == (ChoiceState.STATIC, first)
        else:
            assert _STATE_PROTOCOL[conn.state] is conn.protocol


# -- quic-go's handshake timeouts ------------------------------------------------------------


def test_a_silent_handshake_is_an_idle_timeout_after_five_seconds() -> None:
    assert quic_handshake_expiry(100.0, 100.0, 104.9) is None
    assert quic_handshake_expiry(100.0, 100.0, 105.0) is Outcome.QUIC_HANDSHAKE_IDLE
    assert quic_handshake_deadline(100.0, 100.0) == 100.0 + QUIC_HANDSHAKE_IDLE_TIMEOUT


def test_a_handshake_that_hears_back_but_never_completes_is_a_plain_dial_error() -> None:
    # Heard at 104 and 108: never 5 s of silence, but 10 s in all.
    assert quic_handshake_expiry(100.0, 108.0, 109.9) is None
    assert quic_handshake_expiry(100.0, 108.0, 110.0) is Outcome.DIAL_FAILED
    assert quic_handshake_deadline(100.0, 108.0) == 100.0 + QUIC_HANDSHAKE_TIMEOUT


def test_the_total_budget_wins_a_tie() -> None:
    # quic-go checks the handshake timeout before the idle one.
    assert quic_handshake_expiry(100.0, 105.0, 110.0) is Outcome.DIAL_FAILED
