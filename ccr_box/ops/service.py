"""``ccr-box service install|uninstall|status [--agent]``: run ccr-box as a systemd user service.

``install`` writes ``ccr-box.service`` (the server, ``up --headless``) or, with ``--agent``,
``ccr-box-agent.service`` into ``$XDG_CONFIG_HOME/systemd/user/``, enables it and starts it
(restarts it when it was running). It restarts on failure, logs to the journal and says whether
lingering is on, i.e. whether it starts at boot without a login. ``--print`` only prints the unit.
Where there is no systemd user manager (containers, macOS) nothing is written and it says what to do
instead. The unit holds no secrets; every systemctl/loginctl call goes through :func:`_run`.

Exit codes. install: 0 done (or printed); 1 no usable systemd here, or systemctl failed;
2 no config file, or the agent settings are missing. uninstall: 0 removed or nothing installed;
1 the file could not be removed. status: 0 running; 3 installed but not running (or systemd cannot
be asked); 1 not installed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ccr_box.files import atomic_write
from ccr_box.ops.service_unit import AGENT, SERVER, Role, command, render, unit_dir

if TYPE_CHECKING:
    from ccr_box.config import Config

COMMANDS: tuple[str, ...] = ("service",)

# Variables a systemd service does not inherit from this shell (CCR_BOX_CONFIG is made explicit).
_OWN_PREFIXES = ("CCR_", "TELEGRAM_", "ALLOWED_")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = sub.add_parser(
        "service",
        help="run the server (or, with --agent, the agent) as a systemd user service",
        description="Install, remove or inspect ccr-box's systemd user units.",
    )
    actions = service.add_subparsers(dest="service_command", metavar="ACTION")
    install = actions.add_parser(
        "install", help="write, enable and start the unit (restart on failure, journal logs)"
    )
    install.add_argument("--print", action="store_true", help="only print the unit to stdout")
    install.add_argument("--no-start", action="store_true", help="enable it but do not start it")
    uninstall = actions.add_parser("uninstall", help="stop and disable the unit, delete its file")
    status = actions.add_parser("status", help="is it installed, enabled, running?")
    for parser in (install, uninstall, status):
        parser.add_argument(
            "--agent", action="store_true", help="the machine agent's unit instead of the server's"
        )


def run(args: argparse.Namespace) -> int:
    handlers = {"install": _install, "uninstall": _uninstall, "status": _status}
    if args.service_command not in handlers:
        print("ccr-box: service: choose an action (see `ccr-box service --help`)", file=sys.stderr)
        return 2
    return handlers[args.service_command](args, AGENT if args.agent else SERVER)


@dataclass(frozen=True)
class _Result:
    code: int
    out: str
    err: str

    @property
    def why(self) -> str:
        """The program's complaint in one line (its first stderr line, else stdout)."""
        text = (self.err or self.out).strip()
        return text.splitlines()[0] if text else f"exit status {self.code}"


def _run(*argv: str, timeout: float = 30) -> _Result:
    """Run ``argv``; a missing program is exit status 127, a timeout 124 (like the shell)."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        return _Result(127, "", f"{argv[0]} is not installed (not on PATH)")
    except subprocess.TimeoutExpired:
        return _Result(124, "", f"`{' '.join(argv)}` did not finish within {timeout:g} s")
    return _Result(done.returncode, done.stdout, done.stderr)


def _systemctl(*argv: str, timeout: float = 30) -> _Result:
    return _run("systemctl", "--user", *argv, timeout=timeout)


def _manager() -> tuple[dict[str, str] | None, str]:
    """The systemd user manager's environment (it decides where units live), or why there is none."""
    result = _systemctl("show-environment")
    if result.code != 0:
        return None, result.why
    env = dict(os.environ)
    for line in result.out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("HOME", "XDG_CONFIG_HOME") and not value.startswith(("$'", "'", '"')):
            env[key] = value
    return env, ""


def _install(args: argparse.Namespace, role: Role) -> int:
    from ccr_box.config import load, resolve_config_path

    path = Path(os.path.abspath(resolve_config_path(args.config, os.environ)))
    if not path.exists():
        print(
            f"ccr-box: service: {path} does not exist; run `ccr-box init` first.", file=sys.stderr
        )
        return 2
    config = load(path, env={})  # the service sees the file, not this shell's environment
    if role is AGENT and not (config.agent.server_url and config.agent.api_key):
        missing = "agent.server_url" if not config.agent.server_url else "agent.api_key"
        print(
            f"ccr-box: service: {missing} is not set in {path}; the agent service reads only the "
            "file. Run `ccr-box init` (or set it in [agent]) first.",
            file=sys.stderr,
        )
        return 2
    cmd = command(role, path)
    unit = render(role, cmd, path)
    if args.print:
        print(unit, end="")
        return 0
    env, why = _manager()
    if env is None:
        return _no_systemd(role, cmd, why, config, path)
    target = unit_dir(env) / role.unit
    was_running = target.exists() and _systemctl("is-active", role.unit).out.strip() == "active"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, unit, mode=0o644)  # a unit holds no secret; systemd reads it
    except OSError as exc:
        print(f"ccr-box: service: cannot write {target}: {exc}", file=sys.stderr)
        return 1
    print(f"Wrote {target}.")
    if (result := _systemctl("daemon-reload")).code != 0:
        return _failed("daemon-reload", result)
    steps: list[tuple[str, ...]]
    if args.no_start or was_running:
        steps = [("enable", role.unit), *([] if args.no_start else [("restart", role.unit)])]
    else:
        steps = [("enable", "--now", role.unit)]
    for step in steps:
        if (result := _systemctl(*step, timeout=120)).code != 0:
            return _failed(" ".join(step), result)
    if args.no_start:
        note = "still runs the old command until restarted" if was_running else "is not started"
        print(f"Enabled {role.unit}; it {note} (systemctl --user start/restart {role.name}).")
    else:
        print(f"Enabled and {'re' if was_running else ''}started {role.unit}: restarts on failure.")
    _linger_hint()
    _environment_hint(path)
    print(f"Logs:   journalctl --user -u {role.name} -f")
    print(f"Status: ccr-box service status{role.flag}")
    return 0


def _failed(step: str, result: _Result) -> int:
    print(f"ccr-box: service: `systemctl --user {step}` failed: {result.why}", file=sys.stderr)
    return 1


def _linger_hint() -> None:
    import getpass

    user = getpass.getuser()
    result = _run("loginctl", "show-user", user, "--property=Linger", "--value")
    answer = result.out.strip() if result.code == 0 else ""
    fix = f"sudo loginctl enable-linger {shlex.quote(user)}"
    if answer == "yes":
        print(f"Lingering is on for {user}: it starts at boot, even before anyone logs in.")
    elif answer == "no":
        print(f"Lingering is off for {user}: it runs only while you are logged in.")
        print(f"  So it starts at boot without you logging in, run: {fix}")
    else:
        print(f"Could not check lingering ({result.why if result.code else 'no answer'}).")
        print(f"  So it starts at boot without you logging in, run: {fix}")


def _environment_hint(path: Path) -> None:
    names = sorted(n for n in os.environ if n.startswith(_OWN_PREFIXES) and n != "CCR_BOX_CONFIG")
    if names:
        print(f"Note: the service does not see {', '.join(names)} from this shell;")
        print(f"  it uses only {path}. Put those settings in the file.")


def _no_systemd(role: Role, cmd: list[str], why: str, config: Config, path: Path) -> int:
    target = unit_dir(os.environ) / role.unit
    print(
        f"ccr-box: service: no systemd user manager here ({why}); nothing written.", file=sys.stderr
    )
    print(f"With systemd the unit would go to {target}.")
    line = shlex.join(cmd)
    if sys.platform == "darwin":
        print("On macOS use launchd instead: a ~/Library/LaunchAgents/ plist with")
        print(f"  ProgramArguments = {cmd}, RunAtLoad and KeepAlive set to true,")
        print("  loaded with `launchctl load -w <plist>`.")
    else:
        data_dir = config.agent.data_dir if role is AGENT else config.server.data_dir
        log = shlex.quote(str(data_dir / f"{role.name}.log"))
        print("Instead, start it at boot from cron (`crontab -e`, add this line):")
        print(f"  @reboot {line} >>{log} 2>&1".replace("%", "\\%"))
        print("or keep it running in tmux (it will not come back after a crash or reboot):")
        print(f"  tmux new -d -s {role.name} {shlex.quote(line)}")
    where = shlex.quote(str(target))
    print("Where systemd does run (say, outside this container), install the unit by hand:")
    print(f"  mkdir -p {shlex.quote(str(target.parent))}")
    print(
        f"  ccr-box --config {shlex.quote(str(path))} service install{role.flag} --print > {where}"
    )
    print(f"  systemctl --user daemon-reload && systemctl --user enable --now {role.unit}")
    return 1


def _uninstall(args: argparse.Namespace, role: Role) -> int:
    env, why = _manager()
    target = unit_dir(env or os.environ) / role.unit
    if not target.exists():
        print(f"{role.unit} is not installed ({target} does not exist); nothing to do.")
        return 0
    if env is not None:
        result = _systemctl("disable", "--now", role.unit, timeout=120)
        if result.code == 0:
            print(f"Stopped and disabled {role.unit}.")
        else:
            print(
                f"systemctl could not stop/disable {role.unit} ({result.why}); removing it anyway."
            )
    else:
        print(f"No systemd user manager here ({why}); only removing the file.")
    try:
        target.unlink()
    except OSError as exc:
        print(f"ccr-box: service: cannot remove {target}: {exc}", file=sys.stderr)
        return 1
    print(f"Removed {target}.")
    if env is not None and (result := _systemctl("daemon-reload")).code != 0:
        print(f"(`systemctl --user daemon-reload` failed: {result.why})")
    return 0


_ENABLED = {
    "enabled": "enabled: starts with your user session (at boot if lingering is on)",
    "disabled": "disabled: does not start by itself",
    "masked": "masked: systemd refuses to start it",
}
_ACTIVE = {
    "active": "running",
    "inactive": "stopped",
    "failed": "failed: it crashed or could not start; see the logs",
    "activating": "starting (or waiting to restart after a failure)",
    "deactivating": "stopping",
}


def _status(args: argparse.Namespace, role: Role) -> int:
    env, why = _manager()
    target = unit_dir(env or os.environ) / role.unit
    if not target.exists():
        print(f"{role.unit}: not installed ({target} does not exist).")
        print(f"  Install it with: ccr-box service install{role.flag}")
        return 1
    print(f"Unit file: {target}")
    if env is None:
        print(f"Cannot ask systemd: {why}.")
        return 3
    enabled = _systemctl("is-enabled", role.unit)
    active = _systemctl("is-active", role.unit)
    state = active.out.strip() or active.why
    print(f"Enabled:   {_ENABLED.get(enabled.out.strip(), enabled.out.strip() or enabled.why)}")
    print(f"State:     {_ACTIVE.get(state, state)}")
    print(f"Last logs: journalctl --user -u {role.name} -n 20")
    return 0 if state == "active" else 3
