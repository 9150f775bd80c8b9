"""validate_file: the one check of a config file (ingress validate, start and reload)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adit.config.errors import IngressError
from adit.config.load import load_config
from adit.config.validation import NO_RULES_HINT, validate_file


def _loaded(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yml"
    path.write_text(text)
    return load_config(path)


def test_rules_are_validated_and_located(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, "ingress:\n  - hostname: a.test\n    service: http://x\n")
    with pytest.raises(IngressError) as caught:
        validate_file(loaded, single_origin=True)
    located = str(loaded.locate(caught.value))
    assert located.startswith(f"{loaded.path}:2: ingress[0].hostname: The last ingress rule")


def test_a_file_without_rules_needs_a_single_origin(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, "loglevel: debug\n")
    assert validate_file(loaded, single_origin=True) is None
    with pytest.raises(IngressError) as caught:
        validate_file(loaded, single_origin=False)
    assert str(caught.value) == "The config file doesn't contain any ingress rules"
    assert caught.value.hint == NO_RULES_HINT


@pytest.mark.parametrize("key", ["ingres", "Ingress", "ingresss", "ingess"])
def test_a_misspelt_ingress_key_is_named(tmp_path: Path, key: str) -> None:
    loaded = _loaded(tmp_path, f"tunnel: x\n{key}:\n  - service: http_status:404\n")
    with pytest.raises(IngressError) as caught:
        validate_file(loaded, single_origin=False)
    assert caught.value.hint == f"`{key}` (line 2) is not a key adit knows: did you mean `ingress`?"
    assert str(loaded.locate(caught.value)).endswith(f"\nfix: {caught.value.hint}")


def test_an_empty_file_says_so(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, "")
    with pytest.raises(IngressError) as caught:
        validate_file(loaded, single_origin=False)
    assert caught.value.hint.startswith("the file is empty")


def test_no_file_is_left_to_the_flags() -> None:
    assert validate_file(None, single_origin=False) is None


@pytest.mark.parametrize(
    ("domain", "error"),
    [
        ("https://access.example.test", None),
        ("https://127.0.0.1:8443/", None),
        ("http://access.example.test", "must be an https:// URL"),
        ("https://access.example.test/cdn-cgi", "must be a bare origin"),
    ],
)
def test_access_team_domain_must_be_an_https_origin(
    tmp_path: Path, domain: str, error: str | None
) -> None:
    access = f"{{required: true, audTag: [a], teamDomain: '{domain}'}}"
    loaded = _loaded(
        tmp_path,
        f"ingress:\n  - service: http_status:200\n    originRequest:\n      access: {access}\n",
    )
    if error is None:
        ingress = validate_file(loaded, single_origin=False)
        assert ingress is not None
        assert ingress.rules[0].options.access is not None
        assert ingress.rules[0].options.access.team_domain == domain.rstrip("/")
        return
    with pytest.raises(IngressError, match=error) as caught:
        validate_file(loaded, single_origin=False)
    assert caught.value.location == "ingress[0].originRequest.access.teamDomain"
