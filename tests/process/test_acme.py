"""ACME in the edge against a real pebble: challenges validated on the edge's own listeners.

Each test runs pebble (tests/acme_pebble.py), a DNS server answering the test hostnames with
127.0.0.1, an edge whose public HTTP/HTTPS ports are pebble's validation ports, a connector and
an origin. curl trusts only pebble's root, so a page reached means the ACME certificate was
served by SNI.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

import dns_records
from acme_pebble import start_pebble
from harness import (
    Account,
    Edge,
    Origin,
    Processes,
    create_tunnel,
    login,
    request,
    run_cli,
    start_connector,
    start_edge,
    write_config,
)
from ports import free_port

pytestmark = pytest.mark.process

HOST = "www.acme-test.example.com"


@contextlib.contextmanager
def _dns(names: list[str]) -> Iterator[int]:
    port = free_port()
    with dns_records.serving({}, port=port, addresses={f"{n}.": "127.0.0.1" for n in names}):
        yield port


def _edge(
    processes: Processes,
    pebble_dir: str,
    ca_bundle: Path,
    http_port: int,
    https_port: int,
    challenges: str,
    extra: list[str] | None = None,
) -> Edge:
    return start_edge(
        processes,
        https=True,
        http_listen=f"127.0.0.1:{http_port}",
        https_listen=f"127.0.0.1:{https_port}",
        extra=[
            "--acme-directory",
            pebble_dir,
            "--acme-ca-bundle",
            str(ca_bundle),
            "--acme-challenges",
            challenges,
            "--acme-email",
            "ops@acme-test.example.com",
            *(extra or []),
        ],
    )


def _serve(edge: Edge, origin: Origin, tmp: Path, processes: Processes, host: str) -> Account:
    account = login(edge, tmp / "home")
    tunnel = create_tunnel(account, "web", host)
    config = write_config(tmp / "config.yml", host, [{"service": origin.url}])
    start_connector(processes, tunnel, config)
    return account


def _api_certificates(account: Account) -> dict[str, dict[str, object]]:
    """``GET /adit/v1/certificates`` as the account: status by hostname."""
    import urllib.request

    context = ssl.create_default_context(cafile=str(account.edge.ca))
    context.check_hostname = False
    call = urllib.request.Request(
        f"{account.edge.api_url}/adit/v1/certificates",
        headers={"Authorization": f"Bearer {account.token}"},
    )
    with urllib.request.urlopen(call, context=context, timeout=10) as reply:
        result = json.loads(reply.read())["result"]
    return {row["hostname"]: row for row in result}


def _curl(root: Path, host: str, port: int, path: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(root),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            f"https://{host}:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _served_certificate(port: int, host: str) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _issuer(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string()


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_challenge_issues_a_certificate_served_by_sni(
    challenge: str, processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    http_port, https_port = free_port(), free_port()
    with _dns([HOST, "unrouted.acme-test.example.com"]) as dns_port:
        pebble = start_pebble(
            processes, http_port=http_port, tls_port=https_port, dns_port=dns_port
        )
        root = pebble.root(tmp_path / "pebble-root.pem")
        edge = _edge(processes, pebble.directory, pebble.https_ca, http_port, https_port, challenge)
        _serve(edge, origin, tmp_path, processes, HOST)
        log = edge.proc.wait_for_log(rf"certificate for {HOST} issued by .*\({challenge}\)", 60)
        assert "not issued" not in log
        reply = _curl(root, HOST, https_port)
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout == "hello /"
        # Stored with its key, the key private.
        stored = edge.state_dir / "certificates" / HOST
        assert (stored / "privkey.pem").stat().st_mode & 0o777 == 0o600
        assert (edge.state_dir / "acme" / "account-key.pem").stat().st_mode & 0o777 == 0o600
        # A challenge path with an unknown token: a plain 404 from the edge, not the origin.
        seen = len(origin.seen_headers)
        unknown = request(edge, HOST, path="/.well-known/acme-challenge/no-such-token")
        assert unknown.status == 404
        assert len(origin.seen_headers) == seen
        # An SNI nobody routed gets the edge CA's leaf and no order.
        other = _served_certificate(https_port, "unrouted.acme-test.example.com")
        assert "Pebble" not in _issuer(other)
        time.sleep(2)  # the manager's ticks: an order would have started by now
        assert not (edge.state_dir / "certificates" / "unrouted.acme-test.example.com").exists()
        assert "unrouted" not in pebble.proc.text()
        listing = run_cli(
            ["edge", "cert", "list", "--state-dir", str(edge.state_dir)], home=tmp_path
        )
        assert HOST in listing.stdout and "acme" in listing.stdout
        # Restarted on the same state: the stored certificate from the first handshake on,
        # no new order.
        orders = pebble.proc.text().count("Added order")
        edge.proc.stop()
        (tmp_path / "edge-ready.json").unlink()
        edge = _edge(processes, pebble.directory, pebble.https_ca, http_port, https_port, challenge)
        assert "Pebble" in _issuer(_served_certificate(https_port, HOST))
        time.sleep(2)
        assert pebble.proc.text().count("Added order") == orders


def test_tls_alpn01_answered_by_the_edge_process_that_did_not_order(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    pebble_http, pebble_tls, own_https = free_port(), free_port(), free_port()
    with _dns([HOST]) as dns_port:
        pebble = start_pebble(
            processes, http_port=pebble_http, tls_port=pebble_tls, dns_port=dns_port
        )
        root = pebble.root(tmp_path / "pebble-root.pem")
        # The process that orders is not where pebble validates...
        orderer = _edge(
            processes, pebble.directory, pebble.https_ca, free_port(), own_https, "tls-alpn-01"
        )
        # ...the one on pebble's TLS port shares its state directory and cannot order itself
        # (its CA is unreachable): the challenge pebble's handshake asks for is the orderer's.
        (processes.tmp / "other-state").symlink_to(orderer.state_dir)
        other = start_edge(
            processes,
            "other",
            location="other",
            https=True,
            http_listen=f"127.0.0.1:{pebble_http}",
            https_listen=f"127.0.0.1:{pebble_tls}",
            extra=[
                "--acme-directory",
                f"https://127.0.0.1:{free_port()}/dir",
                "--acme-ca-bundle",
                str(pebble.https_ca),
                "--acme-challenges",
                "tls-alpn-01",
            ],
        )
        _serve(orderer, origin, tmp_path, processes, HOST)
        log = orderer.proc.wait_for_log(rf"certificate for {HOST} issued by .*\(tls-alpn-01\)", 60)
        assert "not issued" not in log
        assert f"certificate for {HOST} issued" not in other.proc.text()
        # The challenge was the other process's to answer, and is gone after the validation.
        assert not list((orderer.state_dir / "acme" / "tls-alpn-01").iterdir())
        reply = _curl(root, HOST, own_https)
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout == "hello /"
        # The other process serves the stored certificate too, once it saw the files.
        for _ in range(100):
            if "Pebble" in _issuer(_served_certificate(pebble_tls, HOST)):
                break
            time.sleep(0.1)
        assert "Pebble" in _issuer(_served_certificate(pebble_tls, HOST))


def test_pebble_down_at_start_then_up(processes: Processes, origin: Origin, tmp_path: Path) -> None:
    http_port, https_port, acme_port = free_port(), free_port(), free_port()
    with _dns([HOST]) as dns_port:
        # The bundle pebble's listener will use, made before pebble exists.
        from acme_pebble import _https_certificate

        https_ca, _, _ = _https_certificate(tmp_path)
        directory = f"https://127.0.0.1:{acme_port}/dir"
        edge = _edge(processes, directory, https_ca, http_port, https_port, "tls-alpn-01")
        account = _serve(edge, origin, tmp_path, processes, HOST)
        edge.proc.wait_for_log(rf"certificate for {HOST} not issued \(connection\)", timeout=30)
        shown = _api_certificates(account)[HOST]
        assert shown["source"] == "edge-ca" and shown["last_error_kind"] == "connection"
        assert shown["next_attempt"]
        # Serving meanwhile, with the edge CA's leaf.
        assert "Pebble" not in _issuer(_served_certificate(https_port, HOST))
        status = json.loads((edge.state_dir / "certificates" / HOST / "status.json").read_text())
        assert status["last_error_kind"] == "connection" and status["source"] == "edge-ca"
        pebble = start_pebble(
            processes,
            http_port=http_port,
            tls_port=https_port,
            dns_port=dns_port,
            listen_port=acme_port,
        )
        root = pebble.root(tmp_path / "pebble-root.pem")
        edge.proc.wait_for_log(rf"certificate for {HOST} issued by", timeout=90)
        reply = _curl(root, HOST, https_port)
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout == "hello /"
        shown = _api_certificates(account)[HOST]
        assert shown["source"] == "acme" and shown["failures"] == 0 and shown["not_after"]


def test_garbage_acme_server_leaves_the_edge_up(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    import http.server
    import threading

    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>not ACME</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        https_port = free_port()
        ca = tmp_path / "unused-ca.pem"
        from acme_pebble import _https_certificate

        ca, _, _ = _https_certificate(tmp_path)
        edge = _edge(
            processes,
            f"http://127.0.0.1:{server.server_address[1]}/dir",
            ca,
            free_port(),
            https_port,
            "http-01",
            extra=["--metrics", "127.0.0.1:0"],
        )
        _serve(edge, origin, tmp_path, processes, HOST)
        edge.proc.wait_for_log(rf"certificate for {HOST} not issued \(bad-response\)", timeout=30)
        assert edge.proc.popen.poll() is None
        # Plain HTTP still reaches the origin; HTTPS serves the edge CA's leaf.
        assert request(edge, HOST).body == b"hello /"
        assert "Pebble" not in _issuer(_served_certificate(https_port, HOST))
        assert 'adit_edge_acme_failures_total{kind="bad-response"} 1.0' in _metrics(tmp_path)
    finally:
        server.shutdown()
        server.server_close()


def _get(port: int, host: str, root: Path) -> tuple[bytes, int]:
    """One HTTPS request (SNI ``host``, trusting only pebble's root): (response, serial)."""
    context = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data, x509.load_der_x509_certificate(der).serial_number


def test_renewal_swaps_the_certificate_without_a_failed_request(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    http_port, https_port = free_port(), free_port()
    with _dns([HOST]) as dns_port:
        # pebble's certificates live 30 s: renewal is due at two thirds, ~20 s.
        pebble = start_pebble(
            processes, http_port=http_port, tls_port=https_port, dns_port=dns_port, validity=30
        )
        root = pebble.root(tmp_path / "pebble-root.pem")
        edge = _edge(
            processes, pebble.directory, pebble.https_ca, http_port, https_port, "tls-alpn-01"
        )
        _serve(edge, origin, tmp_path, processes, HOST)
        edge.proc.wait_for_log(rf"certificate for {HOST} issued by", timeout=60)
        _, first = _get(https_port, HOST, root)
        serials = {first}
        deadline = time.monotonic() + 60
        for _ in range(1200):
            reply, serial = _get(https_port, HOST, root)
            assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"hello /"), reply
            serials.add(serial)
            if len(serials) > 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(serials) == 2, "the renewed certificate was never served"
        edge.proc.wait_for_log(rf"certificate for {HOST} issued by", count=2, timeout=5)
        # And on request: adit edge cert renew.
        out = run_cli(
            ["edge", "cert", "renew", HOST, "--state-dir", str(edge.state_dir)], home=tmp_path
        )
        assert "renewal of" in out.stdout
        edge.proc.wait_for_log(r"renewal requested", timeout=10)
        edge.proc.wait_for_log(rf"certificate for {HOST} issued by", count=3, timeout=30)
        reply, serial = _get(https_port, HOST, root)
        assert reply.endswith(b"hello /") and serial not in serials
        shown = run_cli(
            ["edge", "cert", "show", HOST, "--state-dir", str(edge.state_dir)], home=tmp_path
        )
        assert json.loads(shown.stdout)["source"] == "acme"


def _metrics(tmp: Path) -> str:
    import urllib.request

    address = json.loads((tmp / "edge-ready.json").read_text())["metrics"][0]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _own_certificate(directory: Path, host: str) -> int:
    """A certificate for ``host`` from a CA of the test's own, as site.crt/site.key."""
    from adit.edge.ca import EdgeCA

    leaf = EdgeCA.generate("operator's own CA").issue_leaf([host])
    (directory / "site.key").write_text(leaf.key_pem)
    (directory / "site.crt").write_text(leaf.cert_chain_pem)
    return x509.load_pem_x509_certificates(leaf.cert_chain_pem.encode())[0].serial_number


def test_bring_your_own_certificate_wins_and_reloads(
    processes: Processes, origin: Origin, tmp_path: Path
) -> None:
    http_port, https_port = free_port(), free_port()
    own = tmp_path / "own-certs"
    own.mkdir()
    first = _own_certificate(own, HOST)
    with _dns([HOST]) as dns_port:
        pebble = start_pebble(
            processes, http_port=http_port, tls_port=https_port, dns_port=dns_port
        )
        edge = _edge(
            processes,
            pebble.directory,
            pebble.https_ca,
            http_port,
            https_port,
            "tls-alpn-01",
            extra=["--certificate-dir", str(own), "--metrics", "127.0.0.1:0"],
        )
        edge.proc.wait_for_log(r"certificate .*site\.crt loaded for " + HOST.replace(".", r"\."))
        _serve(edge, origin, tmp_path, processes, HOST)
        assert _served_certificate(https_port, HOST).serial_number == first
        # Replaced on disk: served from the next handshakes on, no restart.
        second = _own_certificate(own, HOST)
        deadline = time.monotonic() + 20
        served = first
        for _ in range(200):
            served = _served_certificate(https_port, HOST).serial_number
            if served == second or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert served == second
        # The operator's certificate wins: pebble was never asked for one.
        time.sleep(2)
        assert "Added order" not in pebble.proc.text()
        assert (
            f'adit_edge_certificate_expiry_timestamp_seconds{{hostname="{HOST}",source="file"}}'
            in (_metrics(tmp_path))
        )


#: pebble's example EAB key (its docs): base64url, as ZeroSSL hands them out.
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def test_external_account_binding(processes: Processes, origin: Origin, tmp_path: Path) -> None:
    http_port, https_port = free_port(), free_port()
    key_file = tmp_path / "eab-hmac.key"
    key_file.write_text(EAB_KEY + "\n")
    key_file.chmod(0o600)
    with _dns([HOST]) as dns_port:
        pebble = start_pebble(
            processes,
            http_port=http_port,
            tls_port=https_port,
            dns_port=dns_port,
            eab_keys={"kid-1": EAB_KEY},
        )
        root = pebble.root(tmp_path / "pebble-root.pem")
        edge = _edge(
            processes,
            pebble.directory,
            pebble.https_ca,
            http_port,
            https_port,
            "http-01",
            extra=["--acme-eab-kid", "kid-1", "--acme-eab-hmac-key", str(key_file)],
        )
        _serve(edge, origin, tmp_path, processes, HOST)
        log = edge.proc.wait_for_log(rf"certificate for {HOST} issued by", timeout=60)
        assert EAB_KEY not in log
        reply = _curl(root, HOST, https_port)
        assert reply.returncode == 0 and reply.stdout == "hello /", reply.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--acme-directory", "ftp:/nowhere"], "--acme-directory 'ftp:/nowhere' is no URL"),
        (["--acme-email", "nobody"], "--acme-email 'nobody' is no e-mail address"),
        (["--acme-eab-kid", "kid-1"], "--acme-eab-kid and --acme-eab-hmac-key"),
        (["--acme-challenges", "dns-02"], "--acme-challenges 'dns-02'"),
        (["--acme-ca-bundle", "/nonexistent.pem"], "--acme-ca-bundle /nonexistent.pem"),
        (["--certificate-dir", "/nonexistent-dir"], "--certificate-dir /nonexistent-dir"),
    ],
)
def test_acme_flags_refused_in_one_line(flags: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(
        ["edge", "--state-dir", str(tmp_path / "state"), *flags], home=tmp_path, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_eab_hmac_key_never_logged(tmp_path: Path) -> None:
    key_file = tmp_path / "eab.key"
    key_file.write_text("s3cr3t-value!!")
    result = run_cli(
        [
            "edge",
            "--state-dir",
            str(tmp_path / "state"),
            "--acme-eab-kid",
            "kid-1",
            "--acme-eab-hmac-key",
            str(key_file),
        ],
        home=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "s3cr3t" not in result.stderr and "base64url" in result.stderr
