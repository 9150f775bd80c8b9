"""The services a benchmark run starts: origin, edge, connectors and the peers.

Everything listens on 127.0.0.1 with ports chosen up front, so the edge can be restarted on
the same addresses (the recovery scenario) and every path's URL is known in advance.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from processes import BenchError, Processes, Service, free_port, wait_port

HOSTNAME = "bench.example.test"  # a zone of the bench account (names under localhost are none)
#: The same origin behind an Access application (the ``adit-1w-access`` path, access_setup.py).
ACCESS_HOSTNAME = "access.example.test"
#: The 1 KiB file of the small-GET scenario.
SMALL_PATH = "/1k.bin"
BIG_PATH = "/big.bin"
UPLOAD_PATH = "/upload"
WS_PATH = "/ws"
ADIT = str(Path(sys.executable).parent / "adit")

_NGINX_CONF = """\
{user}daemon off;
worker_processes {workers};
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
    }}
}}
"""


@dataclass(frozen=True)
class Origin:
    """nginx with the static files, the upload sink and the WebSocket echo."""

    port: int
    sink_port: int
    ws_port: int
    big_file: Path


def start_origin(processes: Processes, tmp: Path, big_size: int) -> Origin:
    """nginx (one worker per CPU) on a generated config, plus the sink process."""
    www = tmp / "www"
    www.mkdir()
    (www / SMALL_PATH.lstrip("/")).write_bytes(os.urandom(1024))
    big = www / BIG_PATH.lstrip("/")
    with big.open("wb") as out:
        out.truncate(big_size)  # sparse: served from the page cache, uploaded from it too
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "",  # the scratch dir is 0700
            workers=os.cpu_count() or 1,
            tmp=tmp,
            www=www,
            port=port,
        )
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    processes.start("nginx", [nginx, "-c", str(conf), "-p", str(tmp)])
    sink_port, ws_port = free_port(), free_port()
    here = Path(__file__).resolve().parent
    processes.start(
        "sink",
        [
            sys.executable,
            str(here / "sink.py"),
            "--port",
            str(sink_port),
            "--ws-port",
            str(ws_port),
        ],
    )
    for p in (port, sink_port, ws_port):
        wait_port(p)
    return Origin(port, sink_port, ws_port, big)


@dataclass
class Edge:
    """``adit edge`` on fixed ports; :meth:`restart` brings it back on the same ones."""

    processes: Processes
    state: Path
    tunnel_ports: tuple[int, ...]
    http_port: int
    api_port: int
    service: Service | None = None
    generation: int = 0
    #: Run the edge under this command (``valgrind --tool=callgrind ...``: instructions.py).
    prefix: tuple[str, ...] = ()
    #: Seconds for the ready file to appear (a minute or so under valgrind).
    start_timeout: float = 20.0
    #: A public HTTPS listener too (``--https-listen``: public_tls_bench.py), when set.
    https_port: int | None = None

    @property
    def tunnel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.tunnel_ports]

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca(self) -> Path:
        return self.state / "ca.pem"

    def start(self) -> float:
        """Start and wait for the ready file; returns when it appeared (monotonic)."""
        ready = self.state.parent / "edge-ready.json"
        ready.unlink(missing_ok=True)
        argv = [*self.prefix, ADIT, "edge", "--state-dir", str(self.state), "--location", "bench"]
        for port in self.tunnel_ports:
            argv += ["--tunnel-listen", f"127.0.0.1:{port}"]
        argv += ["--http-listen", f"127.0.0.1:{self.http_port}"]
        if self.https_port is not None:
            argv += ["--https-listen", f"127.0.0.1:{self.https_port}"]
        argv += ["--api-listen", f"127.0.0.1:{self.api_port}", "--ready-file", str(ready)]
        # Every eyeball of the bench is 127.0.0.1: the per-address cap (256) would refuse
        # the idle-WebSocket scenario's thousand, which is what it is for.
        argv += ["--max-connections-per-ip", "100000"]
        self.generation += 1
        self.service = self.processes.start(f"edge-{self.generation}", argv)
        deadline = time.monotonic() + self.start_timeout
        while not ready.exists():
            if self.service.popen.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"edge did not start:\n{self.service.text()}")
            time.sleep(0.005)
        return time.monotonic()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


def start_edge(processes: Processes, tmp: Path, listeners: int) -> Edge:
    """An edge with ``listeners`` tunnel listeners (one per HA connection)."""
    edge = Edge(
        processes,
        tmp / "edge-state",
        tuple(free_port() for _ in range(listeners)),
        free_port(),
        free_port(),
    )
    edge.start()
    return edge


@dataclass(frozen=True)
class Tunnel:
    """A named tunnel on the edge, its owner's HOME and credentials."""

    name: str
    id: str
    home: Path
    credentials: Path


def _adit(args: list[str], home: Path) -> str:
    result = subprocess.run(
        [ADIT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home)},
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BenchError(f"adit {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


def create_tunnel(edge: Edge, tmp: Path, name: str = "bench", hostname: str = HOSTNAME) -> Tunnel:
    """An account named ``name``, its login, ``tunnel create NAME`` and the route for
    ``hostname`` (one account per tunnel: each is a tenant of the edge)."""
    home = tmp / f"home-{name}" if name != "bench" else tmp / "home"
    home.mkdir()
    state = ["--state-dir", str(edge.state)]
    tag = _adit(["edge", "account", "create", name, *state], home).strip()
    _adit(["edge", "zone", "add", "--account", tag, hostname, *state], home)
    out = _adit(
        ["edge", "token", "create", "--account", tag, "--api-url", edge.api_url, *state], home
    )
    line = next(x for x in out.splitlines() if "tunnel login" in x)
    _adit(line.split()[1:], home)
    created = _adit(["tunnel", "create", name], home)
    tunnel_id = next(w for w in created.split() if len(w) == 36 and w.count("-") == 4)
    _adit(["tunnel", "route", "dns", name, hostname], home)
    return Tunnel(name, tunnel_id, home, home / ".adit" / f"{tunnel_id}.json")


def write_ingress(path: Path, tunnel: Tunnel, origin: Origin) -> Path:
    """config.yml understood by both adit and cloudflared."""
    rules = [
        {
            "hostname": HOSTNAME,
            "path": f"^{UPLOAD_PATH}",
            "service": f"http://127.0.0.1:{origin.sink_port}",
        },
        {
            "hostname": HOSTNAME,
            "path": f"^{WS_PATH}",
            "service": f"http://127.0.0.1:{origin.ws_port}",
        },
        {"hostname": HOSTNAME, "service": f"http://127.0.0.1:{origin.port}"},
        {"hostname": ACCESS_HOSTNAME, "service": f"http://127.0.0.1:{origin.port}"},
        {"service": "http_status:404"},
    ]
    config = {"tunnel": tunnel.id, "credentials-file": str(tunnel.credentials), "ingress": rules}
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start_adit(
    processes: Processes,
    tunnel: Tunnel,
    config: Path,
    *,
    workers: int,
    ha: int,
    name: str,
    protocol: str,
) -> Service:
    """``adit tunnel run --protocol PROTOCOL`` (the supervisor; workers are its children)."""
    return processes.start(
        name,
        [
            ADIT,
            "tunnel",
            "--config",
            str(config),
            "run",
            "--workers",
            str(workers),
            "--ha-connections",
            str(ha),
            "--metrics",
            "127.0.0.1:0",
            "--grace-period",
            "1s",
            "--protocol",
            protocol,
            tunnel.name,
        ],
        env={"HOME": str(tunnel.home)},
    )


def start_cloudflared(
    processes: Processes,
    binary: Path,
    edge: Edge,
    tunnel: Tunnel,
    config: Path,
    *,
    ha: int,
    name: str,
    protocol: str,
) -> Service:
    """cloudflared as the connector of the same tunnel, on the same edge.

    ``protocol`` is always given (``http2`` or ``quic``): cloudflared's ``auto`` asks DNS
    (``protocol-v2.argotunnel.com``), which fails in the bench's namespace and means HTTP/2.
    """
    argv = [str(binary), "tunnel", "--no-autoupdate", "--config", str(config)]
    for address in edge.tunnel_addresses:
        argv += ["--edge", address]
    argv += [
        "--cacert",
        str(edge.ca),
        "--protocol",
        protocol,
        "--ha-connections",
        str(ha),
        "--no-prechecks",
        "--metrics",
        "127.0.0.1:0",
        "--grace-period",
        "1s",
        "run",
        tunnel.id,
    ]
    return processes.start(name, argv, env={"HOME": str(tunnel.home)})


@dataclass(frozen=True)
class SshTunnel:
    """sshd plus ``ssh -R``: the forwarded ports on sshd's side are the public addresses."""

    sshd: Service
    client: Service
    static_port: int
    sink_port: int
    ws_port: int


_SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {tmp}/ssh_host_ed25519_key
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
"""


def start_ssh(processes: Processes, tmp: Path, origin: Origin) -> SshTunnel:
    """A private sshd (own config, own keys) and the classic outbound ``ssh -R``.

    A reverse tunnel forwards ports, not hostnames, so each origin gets its own forward.
    """
    ssh_dir = tmp / "ssh"
    ssh_dir.mkdir()
    os.chmod(ssh_dir, 0o700)
    for name in ("ssh_host_ed25519_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / name)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    shutil.copy(ssh_dir / "client_key.pub", ssh_dir / "authorized_keys")
    sshd_port = free_port()
    public = (free_port(), free_port(), free_port())
    config = ssh_dir / "sshd_config"
    config.write_text(_SSHD_CONFIG.format(port=sshd_port, tmp=ssh_dir))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    sshd_binary = shutil.which("sshd") or "/usr/sbin/sshd"
    sshd = processes.start("sshd", [sshd_binary, "-D", "-e", "-f", str(config)])
    wait_port(sshd_port)
    argv = ["ssh", "-N", "-T", "-i", str(ssh_dir / "client_key"), "-p", str(sshd_port)]
    for option in (
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "ExitOnForwardFailure=yes",
    ):
        argv += ["-o", option]
    for port, local in zip(public, (origin.port, origin.sink_port, origin.ws_port), strict=True):
        argv += ["-R", f"127.0.0.1:{port}:127.0.0.1:{local}"]
    argv.append(f"{getpass.getuser()}@127.0.0.1")
    client = processes.start("ssh", argv)
    return SshTunnel(sshd, client, *public)
