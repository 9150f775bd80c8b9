"""Issue 13 item 20: a reload that would serve nothing is refused, as ``ingress validate`` would.

A real edge, a real connector behind a raw-socket origin, systemd's notify socket. Each broken
``config.yml`` below is first shown to ``adit tunnel ingress validate`` (which must reject
it), then given to the running connector with SIGHUP: the reload must be refused with the file,
the location and the fix in the log, systemd must still see ``RELOADING=1`` … ``READY=1``, and
the origin must keep answering every request. A good file is accepted at the end.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from adversary import (
    CLOSE_RESPONSE,
    NotifySocket,
    canned,
    exchange,
    notify_socket,
    raw_origin,
    start_tenant,
    status_of,
)
from harness import Edge, Processes, Tunnel, adit_command, run_cli

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

HOST = "app.example.test"


def _get(edge: Edge, path: str = "/") -> int:
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    return status_of(exchange(edge.http, request))


def _rules(origin: str) -> list[dict[str, object]]:
    return [{"hostname": HOST, "service": origin}, {"service": "http_status:404"}]


def _write(text: str) -> Callable[[Path, str], None]:
    def write(config: Path, _origin: str) -> None:
        config.write_text(text)

    return write


def _typo(config: Path, origin: str) -> None:
    config.write_text(yaml.safe_dump({"ingres": _rules(origin)}))


def _no_rules(config: Path, _origin: str) -> None:
    config.write_text(yaml.safe_dump({"ingress": [], "loglevel": "debug"}))


def _removed(config: Path, _origin: str) -> None:
    config.unlink()


def _directory(config: Path, _origin: str) -> None:
    config.unlink()
    config.mkdir()


def _bad_service(config: Path, origin: str) -> None:
    rules = _rules(origin)
    rules.insert(1, {"hostname": "b.example.test", "service": "http://127.0.0.1:9/a/path"})
    config.write_text(yaml.safe_dump({"ingress": rules}))


#: (name, how the file is broken, words the rejection must contain)
BROKEN: list[tuple[str, Callable[[Path, str], None], tuple[str, ...]]] = [
    (
        "typo",
        _typo,
        ("doesn't contain any ingress rules", "fix: `ingres` (line 1)", "did you mean"),
    ),
    ("no rules", _no_rules, ("doesn't contain any ingress rules",)),
    ("empty", _write(""), ("empty",)),
    ("yaml", _write("ingress: [\n"), ("yaml",)),
    ("bad service", _bad_service, ("ingress[1].service",)),
    ("removed", _removed, ("no such file",)),
    ("directory", _directory, ("is a directory",)),
]


def _validate(tunnel: Tunnel, config: Path) -> int:
    result = run_cli(
        ["tunnel", "ingress", "validate", "--config", str(config)],
        home=tunnel.account.home,
        check=False,
    )
    return result.returncode


def _reload(
    notify: NotifySocket, connector_signal: Callable[[int], None], after: int
) -> tuple[int, int]:
    connector_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", start=after + 1)
    done = notify.wait_for("READY=1", start=reloading + 1)
    return reloading, done


def test_a_reload_is_validated_like_ingress_validate(processes: Processes, edge: Edge) -> None:
    with notify_socket() as notify, raw_origin(canned(CLOSE_RESPONSE)) as recorder:
        tenant = start_tenant(
            processes, edge, "acme", HOST, recorder.url, env={"NOTIFY_SOCKET": notify.path}
        )
        config = processes.tmp / "config-acme.yml"
        good = config.read_text()
        last = notify.wait_for("READY=1")
        assert _get(edge) == 200
        for name, breaks, words in BROKEN:
            breaks(config, recorder.url)
            if config.is_file():
                assert _validate(tenant.tunnel, config) == 1, name
            rejected_before = tenant.connector.text().count("Rejected the new configuration")
            _reloading, last = _reload(notify, tenant.connector.signal, last)
            text = tenant.connector.wait_for_log(
                r"Rejected the new configuration", count=rejected_before + 1
            )
            line = [x for x in text.splitlines() if "Rejected the new configuration" in x][-1]
            assert str(config) in line, (name, line)
            for word in words:
                assert word in line, (name, word, line)
            assert _get(edge) == 200, name
            if config.is_dir():
                shutil.rmtree(config)
            config.write_text(good)

        # A good change is still applied: the reload path itself works.
        rules = [{"hostname": HOST, "path": "^/new", "service": "http_status:201"}]
        config.write_text(yaml.safe_dump({"ingress": rules + _rules(recorder.url)}))
        assert _validate(tenant.tunnel, config) == 0
        _reload(notify, tenant.connector.signal, last)
        tenant.connector.wait_for_log(r"Applied ingress version 2")
        assert _get(edge, "/new") == 201
        assert _get(edge) == 200

        # A start reads the file the same way: the misspelt file does not start either.
        typo = processes.tmp / "typo.yml"
        _typo(typo, recorder.url)
        started = processes.start(
            "typo-start",
            [*adit_command(), "tunnel", "--config", str(typo), "run", tenant.tunnel.name],
            env={"HOME": str(tenant.account.home)},
        )
        assert started.wait(timeout=30) == 1
        assert "fix: `ingres` (line 1) is not a key adit knows" in started.text()
