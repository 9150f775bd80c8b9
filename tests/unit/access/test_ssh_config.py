"""``adit access ssh-config`` prints cloudflared's stanza (its sshConfigTemplate, rendered by
cloudflared itself for the expected texts below) with adit for the program; ``ssh-gen``
without a login refuses in one line naming the command to run, and exits 1."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from adit.cli.access import access
from adit.cli.access_ssh_config import ssh_config_text

# `HOME=/home/x cloudflared access ssh-config --hostname ssh.example.com` (2025.x), with
# cloudflared's path replaced by PROGRAM.
CLOUDFLARED_PLAIN = (
    "\nAdd to your /home/x/.ssh/config:\n"
    "Host ssh.example.com\n"
    "  ProxyCommand PROGRAM access ssh --hostname %h\n\n"
)
# The same with --short-lived-cert (and ~/.cloudflared as ~/.adit).
CLOUDFLARED_SHORT_LIVED = (
    "\nAdd to your /home/x/.ssh/config:\n"
    'Match host ssh.example.com exec "PROGRAM access ssh-gen --hostname %h"\n'
    "  ProxyCommand PROGRAM access ssh --hostname %h\n"
    "  IdentityFile ~/.adit/%h-cf_key\n"
    "  CertificateFile ~/.adit/%h-cf_key-cert.pub\n"
)


def test_plain_stanza_is_cloudflareds() -> None:
    text = ssh_config_text("/home/x", "ssh.example.com", short_lived=False, program="PROGRAM")
    assert text == CLOUDFLARED_PLAIN


def test_short_lived_stanza_is_cloudflareds() -> None:
    text = ssh_config_text("/home/x", "ssh.example.com", short_lived=True, program="PROGRAM")
    assert text == CLOUDFLARED_SHORT_LIVED


def test_command_prints_the_stanza_with_home_and_a_placeholder_hostname() -> None:
    result = CliRunner().invoke(access, ["ssh-config"], env={"HOME": "/home/x"})
    assert result.exit_code == 0
    assert result.stdout.startswith("\nAdd to your /home/x/.ssh/config:\nHost [your hostname]\n")
    assert " access ssh --hostname %h\n\n" in result.stdout
    program = result.stdout.split("ProxyCommand ", 1)[1].split(" access ssh", 1)[0]
    assert program == "adit" or program.endswith("/adit")


def test_short_lived_cert_prints_the_match_stanza_only() -> None:
    result = CliRunner().invoke(
        access, ["ssh-config", "--hostname", "h.example", "--short-lived-cert"]
    )
    assert result.exit_code == 0
    assert result.stdout.splitlines()[2].startswith('Match host h.example exec "')
    assert result.stderr == ""


def test_ssh_gen_without_a_login_names_the_command_to_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        access, ["ssh-gen", "--hostname", "ssh.example.com"], env={"HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "no login for ssh.example.com" in lines[0]
    assert "run `adit access login https://ssh.example.com` first" in lines[0]
    assert not (tmp_path / ".adit").exists()  # no key made for nothing


def test_ssh_gen_without_hostname_shows_help_as_cloudflared() -> None:
    result = CliRunner().invoke(access, ["ssh-gen"])
    assert result.exit_code == 0
    assert "--hostname" in result.stdout
