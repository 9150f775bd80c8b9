"""Every config in tests/corpus/config through the real CLI: `... ingress validate`.

Each ``NN-name.yml`` has a sidecar ``NN-name.expected`` holding the exit code, stdout and
stderr exactly. Regenerate after a deliberate change with ``ADIT_REGEN_CORPUS=1`` and review
the diff.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "config"
CASES = sorted(CORPUS.glob("*.yml"))
_EXPECTED = re.compile(r"exit: (-?\d+)\n--- stdout\n(.*)--- stderr\n(.*)\Z", re.DOTALL)

pytestmark = pytest.mark.process


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    def render(self) -> str:
        return f"exit: {self.exit_code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"

    @classmethod
    def parse(cls, text: str) -> Outcome:
        match = _EXPECTED.match(text)
        assert match is not None, "malformed .expected file"
        return cls(int(match.group(1)), match.group(2), match.group(3))


def adit_executable() -> str:
    """The installed console script next to this interpreter."""
    candidate = Path(sys.executable).parent / "adit"
    assert candidate.exists(), f"adit console script not found at {candidate}"
    return str(candidate)


def clean_env(home: Path) -> dict[str, str]:
    """The environment minus TUNNEL_* variables, with HOME pointing at an empty folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNEL_")}
    env["HOME"] = str(home)
    return env


def run_validate(config: Path, env: Mapping[str, str]) -> Outcome:
    completed = subprocess.run(
        [adit_executable(), "tunnel", "--config", config.name, "ingress", "validate"],
        cwd=config.parent,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Outcome(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    env = clean_env(tmp_path_factory.mktemp("home"))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda case: (case.name, run_validate(case, env)), CASES)
        return dict(results)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_corpus_case(case: Path, outcomes: dict[str, Outcome]) -> None:
    actual = outcomes[case.name]
    expected_path = case.with_suffix(".expected")
    if os.environ.get("ADIT_REGEN_CORPUS"):
        expected_path.write_text(actual.render(), encoding="utf-8")
    expected = Outcome.parse(expected_path.read_text(encoding="utf-8"))
    assert actual == expected


def run_adit(args: list[str], env: Mapping[str, str]) -> Outcome:
    completed = subprocess.run(
        [adit_executable(), *args],
        cwd=CORPUS,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Outcome(completed.returncode, completed.stdout, completed.stderr)


GOOD = "01-good.yml"
RULE_CASES: list[tuple[list[str], Outcome]] = [
    (
        ["tunnel", "--config", GOOD, "ingress", "rule", "https://a.b.example.xyz/x/index.html"],
        Outcome(
            0,
            "Using rules from 01-good.yml\nMatched rule #1\n\thostname: *.example.xyz\n"
            "\tpath: /[a-zA-Z]+\\.html\n\tservice: http://localhost:8001\n",
            "",
        ),
    ),
    (
        ["tunnel", "--config", GOOD, "ingress", "rule", "https://www.example.com:8443/?q=1"],
        Outcome(
            0,
            "Using rules from 01-good.yml\nMatched rule #0\n\thostname: www.example.com\n"
            "\tservice: https://localhost:8000\n",
            "",
        ),
    ),
    (
        # Hosts match in one spelling, as the edge routes them (cloudflared: rule #2).
        ["tunnel", "--config", GOOD, "ingress", "rule", "https://WWW.EXAMPLE.COM./"],
        Outcome(
            0,
            "Using rules from 01-good.yml\nMatched rule #0\n\thostname: www.example.com\n"
            "\tservice: https://localhost:8000\n",
            "",
        ),
    ),
    (
        [
            "tunnel",
            "ingress",
            "rule",
            "--config",
            "05-stream-schemes.yml",
            "http://ssh.example.com",
        ],
        Outcome(
            0,
            "Using rules from 05-stream-schemes.yml\nMatched rule #0\n"
            "\thostname: ssh.example.com\n\tservice: ssh://localhost:22\n",
            "",
        ),
    ),
    (
        [
            "tunnel",
            "--config",
            "16-unknown-scheme.yml",
            "ingress",
            "rule",
            "http://foo.example.com",
        ],
        Outcome(
            0,
            "Using rules from 16-unknown-scheme.yml\nMatched rule #0\n"
            "\thostname: foo.example.com\n\tservice: foo://localhost:80\n",
            "",
        ),
    ),
    (
        [
            "tunnel",
            "--config",
            "39-punycode-hostname.yml",
            "ingress",
            "rule",
            "https://xn--mnchen-3ya.example.com",
        ],
        Outcome(
            0,
            "Using rules from 39-punycode-hostname.yml\nMatched rule #0\n"
            "\thostname: münchen.example.com\n\tservice: http://localhost:8000\n",
            "",
        ),
    ),
    (
        ["tunnel", "--config", GOOD, "ingress", "rule"],
        Outcome(1, "", "adit tunnel rule expects a single argument, the URL to test\n"),
    ),
    (
        ["tunnel", "--config", GOOD, "ingress", "rule", "www.example.com"],
        Outcome(1, "", "www.example.com doesn't have a hostname, consider adding a scheme\n"),
    ),
    (
        [
            "tunnel",
            "--config",
            "10-last-rule-hostname.yml",
            "ingress",
            "rule",
            "http://a.example.com",
        ],
        Outcome(
            1,
            "Using rules from 10-last-rule-hostname.yml\n",
            "Validation failed: The last ingress rule must match all URLs (i.e. it should not "
            "have a hostname or path filter)\n",
        ),
    ),
    (
        ["tunnel", "ingress", "validate"],
        Outcome(
            1,
            "",
            "No configuration file was found. Please create one, or use the --config flag to "
            "specify its filepath. You can use the help command to learn more about "
            "configuration files\n",
        ),
    ),
    (
        ["tunnel", "--config", "/nonexistent/config.yml", "ingress", "validate"],
        Outcome(1, "", "open /nonexistent/config.yml: no such file or directory\n"),
    ),
    (
        ["tunnel", "ingress", "validate", "--json", '{"ingress":[{"service":"http_status:404"}]}'],
        Outcome(0, "Validating rules from cmdline flag --json\nOK\n", ""),
    ),
    (
        [
            "tunnel",
            "ingress",
            "validate",
            "-j",
            '{"originRequest":{"connectTimeout":10},"ingress":[{"hostname":"a.com",'
            '"service":"http://x"},{"service":"http_status:404"}]}',
        ],
        Outcome(0, "Validating rules from cmdline flag --json\nOK\n", ""),
    ),
    (
        [
            "tunnel",
            "ingress",
            "validate",
            "--json",
            '{"ingress":[{"hostname":"a.com","service":"http://x"}]}',
        ],
        Outcome(
            1,
            "Validating rules from cmdline flag --json\n",
            "Validation failed: The last ingress rule must match all URLs (i.e. it should not "
            "have a hostname or path filter)\n",
        ),
    ),
    (
        ["tunnel", "ingress", "validate", "--json", '{"originRequest":{"connectTimeout":"10s"}}'],
        Outcome(
            1,
            "Validating rules from cmdline flag --json\n",
            "originRequest.connectTimeout: expected integer seconds, got str\n",
        ),
    ),
]


@pytest.mark.parametrize(
    ("args", "expected"), RULE_CASES, ids=[str(i) for i in range(len(RULE_CASES))]
)
def test_cli_case(args: list[str], expected: Outcome, tmp_path: Path) -> None:
    assert run_adit(args, clean_env(tmp_path)) == expected


def test_url_env_conflicts_with_ingress(tmp_path: Path) -> None:
    env = clean_env(tmp_path) | {"TUNNEL_URL": "http://localhost:8000"}
    outcome = run_adit(["tunnel", "--config", GOOD, "ingress", "validate"], env)
    assert outcome == Outcome(
        1,
        "Validating rules from 01-good.yml\n",
        "You can't set the --url flag (or $TUNNEL_URL) when using multiple-origin ingress rules\n",
    )


def test_config_found_on_search_path(tmp_path: Path) -> None:
    (tmp_path / ".cloudflared").mkdir()
    found = tmp_path / ".cloudflared" / "config.yaml"
    found.write_text((CORPUS / "02-minimal.yml").read_text(encoding="utf-8"), encoding="utf-8")
    outcome = run_adit(["tunnel", "ingress", "validate"], clean_env(tmp_path))
    assert outcome == Outcome(0, f"Validating rules from {found}\nOK\n", "")


def test_run_refuses_a_misspelt_service_naming_file_rule_and_key(tmp_path: Path) -> None:
    """`adit tunnel run` makes the check `ingress validate` makes: it never connects."""
    credentials = tmp_path / "creds.json"
    credentials.write_text(
        '{"AccountTag": "acme", "TunnelSecret": "'
        + "A" * 43
        + '=", "TunnelID": "6ff42ae2-765d-4adf-8112-31c55c1551ef"}'
    )
    credentials.chmod(0o600)
    outcome = run_adit(
        [
            "tunnel",
            "--config",
            "61-misspelt-service.yml",
            "run",
            "--metrics",
            "127.0.0.1:0",
            "--credentials-file",
            str(credentials),
            "--edge",
            "127.0.0.1:9",
            "6ff42ae2-765d-4adf-8112-31c55c1551ef",
        ],
        clean_env(tmp_path),
    )
    assert outcome.exit_code == 1, outcome
    assert outcome.stderr.splitlines()[-2:] == [
        '61-misspelt-service.yml:9: ingress[2]: unknown key "servce" on line 10 (did you mean '
        '"service"?), and the rule has no service',
        'fix: rename "servce" to "service"',
    ], outcome.stderr
