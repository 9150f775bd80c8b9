"""The signed package repositories of the packaging tests, built by ``./run repo`` itself.

One session builds them once: a test key (``gpg --quick-gen-key``, no passphrase, a temporary
GNUPGHOME), then two ``./run repo`` runs side by side, signed by that key:

* ``out``: versions ``VERSION`` (the tree's) and ``NEXT`` for apt (bookworm and trixie), dnf and
  pacman: what a user adds, and what an upgrade goes to;
* ``broken``: ``BROKEN`` (after ``NEXT``), apt only, built from a clean copy whose worker module
  raises at import: a next version that cannot start.

A second key (``stranger``) is never published: what signs a forged ``InRelease``.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distro_roots import REPO, VERSION, run


def bump(version: str) -> str:
    """The version after ``version``: its last number plus one (2026.11.0 -> 2026.11.1)."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}"


NEXT = bump(VERSION)
BROKEN = bump(NEXT)
#: The URL README.md writes for the published repository; tests put theirs in its place.
README_URL = "https://pkg.adit.example"
BROKEN_MARK = "adit test build: broken on purpose"


@dataclass(frozen=True)
class Key:
    """A GnuPG home holding one signing key."""

    home: Path
    fingerprint: str

    def gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["gpg", "--homedir", str(self.home), "--batch", "--yes", *args])


def make_key(home: Path, uid: str) -> Key:
    home.mkdir(mode=0o700, parents=True)
    argv = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
    run([*argv, "--quick-gen-key", uid, "rsa3072", "sign", "never"])
    listing = run([*argv, "--with-colons", "--list-secret-keys"]).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    return Key(home, fpr)


def clean_tree(dest: Path) -> Path:
    """The working tree's tracked and unignored files (what a clean checkout holds)."""
    files = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"]).stdout
    dest.mkdir(parents=True)
    archive = dest.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, files.split("\0")):
            if (REPO / name).exists():
                tar.add(REPO / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()
    return dest


def break_workers(tree: Path) -> None:
    """Make ``tree``'s worker module raise at import: a build whose workers never start."""
    main = tree / "workers/adit/workers/__main__.py"
    text = main.read_text(encoding="utf-8")
    future = "from __future__ import annotations\n"
    assert future in text, main
    main.write_text(
        text.replace(future, f"{future}\nraise RuntimeError({BROKEN_MARK!r})\n", 1),
        encoding="utf-8",
    )


@dataclass(frozen=True)
class Repository:
    """What ``./run repo`` wrote, and the keys around it."""

    out: Path
    broken: Path
    key: Key
    stranger: Key
    arch: str

    def deb(self, suite: str, version: str, *, broken: bool = False) -> Path:
        base = self.broken if broken else self.out
        return base / f"apt/pool/{suite}/main/a/adit/adit_{version}_{self.arch}.deb"

    def rpms(self) -> list[Path]:
        return sorted((self.out / "rpm").glob("adit-*.rpm"))

    def pacman_dir(self) -> Path:
        dirs = [d for d in (self.out / "pacman").iterdir() if d.is_dir()]
        assert len(dirs) == 1, dirs
        return dirs[0]

    def pacman_package(self, version: str) -> Path:
        pattern = f"adit-{version}-1-*.pkg.tar.*"
        found = [p for p in self.pacman_dir().glob(pattern) if p.suffix != ".sig"]
        assert len(found) == 1, found
        return found[0]


def repo_command(key: Key, out: Path, *args: str) -> list[str]:
    return [
        str(REPO / "run"),
        "repo",
        "--out",
        str(out),
        "--key-dir",
        str(key.home),
        "--key-id",
        key.fingerprint,
        *args,
    ]


@dataclass(frozen=True)
class Stage:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def build_repository(work: Path) -> Iterator[Repository]:
    """Keys, both ``./run repo`` runs at once, then the Repository; the keys' agents end after."""
    key = make_key(work / "gnupg", "adit test archive <archive@adit.test>")
    stranger = make_key(work / "gnupg-stranger", "someone else <else@adit.test>")
    broken_src = clean_tree(work / "broken-src")
    break_workers(broken_src)
    runs = [
        ("main", repo_command(key, work / "repo", "--version", VERSION, "--version", NEXT)),
        (
            "broken",
            repo_command(
                key,
                work / "repo-broken",
                "--families",
                "apt",
                "--version",
                BROKEN,
                "--src",
                str(broken_src),
            ),
        ),
    ]
    stages = []
    for name, argv in runs:
        log = work / f"repo-{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        stages.append(Stage(name, popen, log))
    try:
        for stage in stages:
            code = stage.popen.wait(timeout=1800)
            text = stage.log.read_text(errors="replace")
            assert code == 0, f"./run repo ({stage.name}) exited {code}:\n{text[-6000:]}"
    finally:
        for stage in stages:
            if stage.popen.poll() is None:
                stage.popen.terminate()  # repo.sh stops its builds' process groups
                stage.popen.wait(timeout=60)
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    try:
        yield Repository(work / "repo", work / "repo-broken", key, stranger, arch)
    finally:
        for home in (key.home, stranger.home):
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, timeout=30
            )
        shutil.rmtree(work / "broken-src", ignore_errors=True)


def readme_block(marker: str) -> str:
    """The README's ``sh`` block that contains ``marker`` (what a user pastes)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [part.split("```", 1)[0] for part in text.split("```sh\n")[1:]]
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"README.md: {len(found)} sh blocks mention {marker!r}"
    return found[0]


def rpmlint(rpm: Path, key: Path, scratch: Path) -> tuple[list[str], str]:
    """rpmlint's errors for ``rpm`` and its whole report; the signature is checked against ``key``.

    rpmlint verifies the signature with the rpmdb, so the (armored) key goes into a private one,
    named by the ``.rpmmacros`` of a scratch HOME, never into the host's.
    """
    rpmdb = scratch / "rpmdb"
    rpmdb.mkdir(parents=True, exist_ok=True)
    run(["rpm", "--dbpath", str(rpmdb), "--import", str(key)])
    (scratch / ".rpmmacros").write_text(f"%_dbpath {rpmdb}\n", encoding="utf-8")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(scratch), "LANG": "C.UTF-8"}
    rc = str(REPO / "rpm/adit.rpmlintrc")
    lint = run(["rpmlint", "-r", rc, str(rpm)], check=False, timeout=900, env=env)
    return [line for line in lint.stdout.splitlines() if ": E: " in line], lint.stdout
