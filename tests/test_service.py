"""``ccr-box service install|uninstall|status [--agent]`` against fake ``systemctl``/``loginctl``.

The fakes are small shell scripts in a bin directory that is the whole PATH: each appends its argv
to a log and answers from environment variables (``FAKE_ACTIVE``, ``FAKE_LINGER``, ``FAKE_FAIL``...),
so the tests see exactly which commands ran, in which order. A fake ``ccr-box`` on that PATH is
the executable the units must name. ``main`` runs in-process; only the environment is changed.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccr_box.cli import main
from ccr_box.config import load, secrets_of
from ccr_box.config_file import write_initial
from tests.helpers_proc import OWN_PREFIXES

BOT_TOKEN = "123456:SECRET-bot-token-value"
SERVER_URL = "http://homeserver:8787"

SYSTEMCTL = """\
#!/bin/sh
echo "systemctl $*" >> "$FAKE_LOG"
if [ "$2" = "$FAKE_FAIL" ]; then echo "Failed to $2: boom" >&2; exit 1; fi
case "$2" in
  show-environment)
    if [ -n "$FAKE_NO_MANAGER" ]; then
      echo "Failed to connect to bus: No medium found" >&2; exit 1
    fi
    echo "HOME=$HOME"
    echo "XDG_CONFIG_HOME=${FAKE_MANAGER_XDG:-$XDG_CONFIG_HOME}" ;;
  is-active) echo "${FAKE_ACTIVE:-inactive}"; [ "${FAKE_ACTIVE:-inactive}" = active ] ;;
  is-enabled) echo "${FAKE_ENABLED:-enabled}"; [ "${FAKE_ENABLED:-enabled}" = enabled ] ;;
esac
"""

LOGINCTL = """\
#!/bin/sh
echo "loginctl $*" >> "$FAKE_LOG"
if [ "$FAKE_LINGER" = error ]; then echo "Failed to get user: not logged in" >&2; exit 1; fi
echo "${FAKE_LINGER:-no}"
"""


class Fakes:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.bin = tmp_path / "fake bin"  # a space: ExecStart must quote it
        self.bin.mkdir()
        for name, text in (("systemctl", SYSTEMCTL), ("loginctl", LOGINCTL), ("ccr-box", "")):
            script = self.bin / name
            script.write_text(text or "#!/bin/sh\nexit 0\n", encoding="utf-8")
            script.chmod(0o755)
        self.log_path = tmp_path / "calls.log"
        self.xdg = tmp_path / "xdg config"
        self.units = self.xdg / "systemd" / "user"
        for name, value in {
            "PATH": str(self.bin),  # nothing else: the real systemctl/loginctl stay out of reach
            "HOME": str(tmp_path / "home"),
            "XDG_CONFIG_HOME": str(self.xdg),
            "LOGNAME": "alice",
            "FAKE_LOG": str(self.log_path),
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("FAKE_ACTIVE", "FAKE_LINGER", "FAKE_FAIL", "FAKE_NO_MANAGER"):
            monkeypatch.delenv(name, raising=False)

    def set(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    def calls(self) -> list[str]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        self.log_path.unlink()
        return lines


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    yield Fakes(tmp_path, monkeypatch)


def write_config(path: Path, agent: bool = True) -> Path:
    values = {("telegram", "bot_token"): BOT_TOKEN}
    if agent:
        values[("agent", "server_url")] = SERVER_URL
    write_initial(path, values)
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.toml")


def service(cfg: Path, *args: str) -> int:
    return main(["--config", str(cfg), "service", *args])


def printed_unit(cfg: Path, capsys, *args: str) -> str:
    assert service(cfg, "install", "--print", *args) == 0
    return capsys.readouterr().out


# --- unit content -------------------------------------------------------------------------------


def test_server_unit_runs_up_headless_with_absolute_paths_and_no_secrets(
    fakes: Fakes, cfg: Path, capsys
) -> None:
    unit = printed_unit(cfg, capsys)
    lines = unit.splitlines()
    assert lines[0].startswith("# Written by `ccr-box service install`")
    assert "ccr-box service uninstall" in lines[0]
    assert f'ExecStart="{fakes.bin}/ccr-box" --config {cfg} up --headless' in lines
    for expected in (
        "[Unit]",
        "After=network-online.target",
        "Wants=network-online.target",
        "[Service]",
        "Type=simple",
        "Restart=on-failure",
        "RestartSec=5",
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=ccr-box",
        "UMask=0077",
        "Environment=PYTHONUNBUFFERED=1",
        "[Install]",
        "WantedBy=default.target",
    ):
        assert expected in lines
    config_secrets = secrets_of(load(cfg, env={}))
    assert BOT_TOKEN in config_secrets and len(config_secrets) >= 3  # api key, webhook secrets
    for secret in config_secrets:
        assert secret not in unit
    assert fakes.calls() == []  # --print asks nobody
    assert not fakes.units.exists()


def test_agent_unit_runs_the_agent(fakes: Fakes, cfg: Path, capsys) -> None:
    unit = printed_unit(cfg, capsys, "--agent")
    lines = unit.splitlines()
    assert f'ExecStart="{fakes.bin}/ccr-box" --config {cfg} agent' in lines
    assert "SyslogIdentifier=ccr-box-agent" in lines
    assert "After=network-online.target ccr-box.service" in lines
    assert "Restart=on-failure" in lines and "StandardError=journal" in lines
    assert "`ccr-box service uninstall --agent`" in lines[0]
    for secret in secrets_of(load(cfg, env={})):
        assert secret not in unit


def test_paths_with_spaces_quotes_percent_and_dollar_are_quoted_for_systemd(
    fakes: Fakes, tmp_path: Path, capsys
) -> None:
    odd = tmp_path / 'we\\ird "dir"' / "100% $HOME.toml"
    write_config(odd)
    lines = printed_unit(odd, capsys).splitlines()
    quoted_cfg = f'"{tmp_path}/we\\\\ird \\"dir\\"/100%% $$HOME.toml"'
    assert f'ExecStart="{fakes.bin}/ccr-box" --config {quoted_cfg} up --headless' in lines


def test_without_ccr_box_on_path_the_unit_runs_this_python(fakes: Fakes, cfg: Path, capsys) -> None:
    (fakes.bin / "ccr-box").unlink()
    lines = printed_unit(cfg, capsys).splitlines()
    python = os.path.abspath(sys.executable)
    word = f'"{python}"' if " " in python else python
    assert f"ExecStart={word} -m ccr_box --config {cfg} up --headless" in lines


# --- install ------------------------------------------------------------------------------------


def test_install_writes_the_unit_reloads_and_enables_it_now(
    fakes: Fakes, cfg: Path, capsys
) -> None:
    expected = printed_unit(cfg, capsys)
    assert service(cfg, "install") == 0
    out = capsys.readouterr().out
    unit = fakes.units / "ccr-box.service"
    assert unit.read_text(encoding="utf-8") == expected
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert [p.name for p in fakes.units.iterdir()] == ["ccr-box.service"]  # no temp file left
    assert fakes.calls() == [
        "systemctl --user show-environment",
        "systemctl --user daemon-reload",
        "systemctl --user enable --now ccr-box.service",
        "loginctl show-user alice --property=Linger --value",
    ]
    assert f"Wrote {unit}." in out
    assert "Enabled and started ccr-box.service" in out
    assert "journalctl --user -u ccr-box -f" in out
    assert "ccr-box service status" in out


def test_install_agent_uses_the_agent_unit(fakes: Fakes, cfg: Path, capsys) -> None:
    assert service(cfg, "install", "--agent") == 0
    out = capsys.readouterr().out
    assert "systemctl --user enable --now ccr-box-agent.service" in fakes.calls()
    assert (fakes.units / "ccr-box-agent.service").exists()
    assert not (fakes.units / "ccr-box.service").exists()
    assert "journalctl --user -u ccr-box-agent -f" in out
    assert "ccr-box service status --agent" in out


def test_reinstall_restarts_a_running_service_so_the_new_command_applies(
    fakes: Fakes, cfg: Path, capsys
) -> None:
    assert service(cfg, "install") == 0
    fakes.calls()
    fakes.set(FAKE_ACTIVE="active")
    assert service(cfg, "install") == 0
    assert fakes.calls()[:5] == [
        "systemctl --user show-environment",
        "systemctl --user is-active ccr-box.service",
        "systemctl --user daemon-reload",
        "systemctl --user enable ccr-box.service",
        "systemctl --user restart ccr-box.service",
    ]
    assert "Enabled and restarted ccr-box.service" in capsys.readouterr().out


def test_reinstall_of_a_stopped_service_starts_it(fakes: Fakes, cfg: Path) -> None:
    assert service(cfg, "install") == 0
    fakes.calls()
    assert service(cfg, "install") == 0  # FAKE_ACTIVE unset: inactive
    calls = fakes.calls()
    assert "systemctl --user enable --now ccr-box.service" in calls
    assert not any("restart" in call for call in calls)


def test_no_start_only_enables(fakes: Fakes, cfg: Path, capsys) -> None:
    assert service(cfg, "install", "--no-start") == 0
    calls = fakes.calls()
    assert "systemctl --user enable ccr-box.service" in calls
    assert not any("--now" in c or "start" in c.split() or "restart" in c for c in calls)
    assert "is not started" in capsys.readouterr().out


def test_linger_off_tells_how_to_start_at_boot(fakes: Fakes, cfg: Path, capsys) -> None:
    fakes.set(FAKE_LINGER="no")
    assert service(cfg, "install") == 0
    out = capsys.readouterr().out
    assert "Lingering is off for alice" in out
    assert (
        "so it starts at boot without you logging in, run: sudo loginctl enable-linger alice"
        in (out.lower())
    )


def test_linger_on_says_it_starts_at_boot(fakes: Fakes, cfg: Path, capsys) -> None:
    fakes.set(FAKE_LINGER="yes")
    assert service(cfg, "install") == 0
    out = capsys.readouterr().out
    assert "Lingering is on for alice: it starts at boot" in out
    assert "enable-linger" not in out


@pytest.mark.parametrize("how", ["missing", "failing"])
def test_unknown_linger_still_gives_the_hint(fakes: Fakes, cfg: Path, capsys, how: str) -> None:
    if how == "missing":
        (fakes.bin / "loginctl").unlink()
    else:
        fakes.set(FAKE_LINGER="error")
    assert service(cfg, "install") == 0
    out = capsys.readouterr().out
    assert "Could not check lingering" in out
    assert "sudo loginctl enable-linger alice" in out


def test_a_failing_systemctl_step_is_reported_with_its_message(
    fakes: Fakes, cfg: Path, capsys
) -> None:
    fakes.set(FAKE_FAIL="enable")
    assert service(cfg, "install") == 1
    err = capsys.readouterr().err
    assert "`systemctl --user enable --now ccr-box.service` failed: Failed to enable: boom" in err
    assert not any("loginctl" in c for c in fakes.calls())


def test_the_unit_goes_where_the_user_manager_looks(
    fakes: Fakes, cfg: Path, tmp_path: Path
) -> None:
    manager_xdg = tmp_path / "manager-xdg"
    fakes.set(FAKE_MANAGER_XDG=str(manager_xdg))
    assert service(cfg, "install") == 0
    assert (manager_xdg / "systemd" / "user" / "ccr-box.service").exists()
    assert not fakes.units.exists()


def test_settings_only_in_the_shell_environment_are_pointed_out(
    fakes: Fakes, cfg: Path, capsys
) -> None:
    fakes.set(TELEGRAM_BOT_TOKEN="999:from-the-shell")
    assert service(cfg, "install") == 0
    out = capsys.readouterr().out
    assert "does not see TELEGRAM_BOT_TOKEN" in out
    assert "999:from-the-shell" not in out


# --- install refusals and the no-systemd case ---------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--print"], ["--agent"]])
def test_a_missing_config_is_refused(fakes: Fakes, tmp_path: Path, capsys, extra) -> None:
    assert service(tmp_path / "nope.toml", "install", *extra) == 2
    out, err = capsys.readouterr()
    assert "does not exist" in err and "ccr-box init" in err
    assert out == ""
    assert fakes.calls() == []
    assert not fakes.units.exists()


def test_agent_without_server_url_in_the_file_is_refused(
    fakes: Fakes, tmp_path: Path, capsys
) -> None:
    cfg = write_config(tmp_path / "config.toml", agent=False)
    fakes.set(CCR_WORKER_URL=SERVER_URL)  # the service would not see this
    assert service(cfg, "install", "--agent") == 2
    err = capsys.readouterr().err
    assert "agent.server_url is not set" in err and "ccr-box init" in err
    assert fakes.calls() == []
    assert not fakes.units.exists()
    assert service(cfg, "install") == 0  # the server unit does not need it


def test_without_systemd_nothing_is_written_and_alternatives_are_shown(
    fakes: Fakes, cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert service(cfg, "install") == 1
    out, err = capsys.readouterr()
    assert "no systemd user manager here (systemctl is not installed" in err
    assert "nothing written" in err
    assert str(fakes.units / "ccr-box.service") in out
    assert "@reboot " in out and "-m ccr_box --config" in out
    assert "tmux new -d -s ccr-box '" in out
    assert "service install --print >" in out
    assert not fakes.units.exists()


def test_a_systemctl_without_user_manager_counts_as_no_systemd(
    fakes: Fakes, cfg: Path, capsys
) -> None:
    fakes.set(FAKE_NO_MANAGER="1")
    assert service(cfg, "install", "--agent") == 1
    out, err = capsys.readouterr()
    assert "Failed to connect to bus" in err
    assert "tmux new -d -s ccr-box-agent" in out
    assert "service install --agent --print" in out
    assert fakes.calls() == ["systemctl --user show-environment"]
    assert not fakes.units.exists()


def test_on_macos_launchd_is_suggested(
    fakes: Fakes, cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    fakes.set(FAKE_NO_MANAGER="1")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert service(cfg, "install") == 1
    out = capsys.readouterr().out
    assert "launchd" in out and "LaunchAgents" in out
    assert "@reboot" not in out


def test_print_works_without_systemd(
    fakes: Fakes, cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert service(cfg, "install", "--print") == 0
    out, err = capsys.readouterr()
    assert out.startswith("# Written by `ccr-box service install`")
    assert "ExecStart=" in out and err == ""
    assert not fakes.units.exists()


# --- uninstall ----------------------------------------------------------------------------------


def test_uninstall_disables_removes_and_reloads(fakes: Fakes, cfg: Path, capsys) -> None:
    assert service(cfg, "install", "--agent") == 0
    fakes.calls()
    capsys.readouterr()
    assert service(cfg, "uninstall", "--agent") == 0
    assert fakes.calls() == [
        "systemctl --user show-environment",
        "systemctl --user disable --now ccr-box-agent.service",
        "systemctl --user daemon-reload",
    ]
    assert not (fakes.units / "ccr-box-agent.service").exists()
    out = capsys.readouterr().out
    assert "Stopped and disabled ccr-box-agent.service" in out and "Removed " in out


def test_uninstall_removes_the_file_even_when_disable_fails(
    fakes: Fakes, cfg: Path, capsys
) -> None:
    assert service(cfg, "install") == 0
    capsys.readouterr()
    fakes.set(FAKE_FAIL="disable")
    assert service(cfg, "uninstall") == 0
    assert not (fakes.units / "ccr-box.service").exists()
    assert "could not stop/disable ccr-box.service (Failed to disable: boom)" in (
        capsys.readouterr().out
    )


def test_uninstall_when_nothing_is_installed(fakes: Fakes, cfg: Path, capsys) -> None:
    assert service(cfg, "uninstall") == 0
    assert "not installed" in capsys.readouterr().out
    assert fakes.calls() == ["systemctl --user show-environment"]


# --- status -------------------------------------------------------------------------------------


def test_status_of_a_missing_unit_is_1(fakes: Fakes, cfg: Path, capsys) -> None:
    assert service(cfg, "status") == 1
    out = capsys.readouterr().out
    assert "not installed" in out and "ccr-box service install" in out


@pytest.mark.parametrize(
    ("active", "code", "words"),
    [
        ("active", 0, "running"),
        ("inactive", 3, "stopped"),
        ("failed", 3, "failed: it crashed or could not start"),
    ],
)
def test_status_reports_enabled_and_active_in_words(
    fakes: Fakes, cfg: Path, capsys, active: str, code: int, words: str
) -> None:
    assert service(cfg, "install", "--agent", "--no-start") == 0
    fakes.calls()
    capsys.readouterr()
    fakes.set(FAKE_ACTIVE=active, FAKE_ENABLED="enabled")
    assert service(cfg, "status", "--agent") == code
    out = capsys.readouterr().out
    assert f"Unit file: {fakes.units / 'ccr-box-agent.service'}" in out
    assert "Enabled:   enabled: starts with your user session" in out
    assert f"State:     {words}" in out
    assert "journalctl --user -u ccr-box-agent -n 20" in out
    assert fakes.calls() == [
        "systemctl --user show-environment",
        "systemctl --user is-enabled ccr-box-agent.service",
        "systemctl --user is-active ccr-box-agent.service",
    ]


def test_status_without_user_manager_is_3(fakes: Fakes, cfg: Path, capsys) -> None:
    assert service(cfg, "install") == 0
    fakes.set(FAKE_NO_MANAGER="1")
    capsys.readouterr()
    assert service(cfg, "status") == 3
    assert "Cannot ask systemd: Failed to connect to bus" in capsys.readouterr().out


def test_service_without_an_action_says_what_to_do(fakes: Fakes, cfg: Path, capsys) -> None:
    assert service(cfg) == 2
    assert "ccr-box service --help" in capsys.readouterr().err
