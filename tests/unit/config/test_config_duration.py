"""Go duration strings: parsing and formatting agree with Go's time package."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adit.config.duration import Duration, format_go_duration, parse_go_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        ("-1m", -60.0),
        ("+5s", 5.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1h2m3s4ms", 3723.004),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("5", 'time: missing unit in duration "5"'),
        ("5d", 'time: unknown unit "d" in duration "5d"'),
        (".s", 'time: invalid duration ".s"'),
        ("s", 'time: invalid duration "s"'),
        ("1s2", 'time: missing unit in duration "1s2"'),
        ("-", 'time: invalid duration "-"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.") + "$"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (30, "30s"), (90, "1m30s"), (3600, "1h0m0s"), (1.5, "1.5s"), (0.25, "250ms")],
)
def test_format(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_format_then_parse_round_trips(seconds: int) -> None:
    assert parse_go_duration(format_go_duration(seconds)) == seconds


def test_duration_value() -> None:
    assert Duration.parse("1m").seconds == 60
    assert Duration.from_seconds(90).text == "1m30s"
    assert Duration.parse("60s") == Duration.parse("1m")
    assert str(Duration.parse("60s")) == "60s"
