"""The systemd units in `systemd/`: what the daemon's contract needs from them.

Read with a small parser (unit files are INI-like but repeat keys, and an empty
assignment resets a list), never by running systemd: the units must start `pithcrawl`
with a command line its own parser accepts, as a notify service that reloads on SIGHUP,
in a state directory that `default_db_path` finds, under a strict sandbox. Rating the
sandbox needs `systemd-analyze`, so it lives in `systemd/check-security.sh`, not here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from pithcrawl.cli import build_parser
from pithcrawl.config import Config

UNITS = Path(__file__).resolve().parent.parent / "systemd"
CONFIG = Path("/etc/pithcrawl/pithcrawl.toml")
TRUE = {"yes", "true", "on", "1"}
#: Settings that make the daemon a daemon and the sync a one-shot; all else is shared.
MODE_KEYS = {
    "Type",
    "NotifyAccess",
    "ExecStart",
    "ExecReload",
    "TimeoutStartSec",
    "WatchdogSec",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
}


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit file as (section, key) -> every value assigned, in order."""

    entries: dict[tuple[str, str], list[str]]

    @classmethod
    def parse(cls, text: str) -> Unit:
        entries: dict[tuple[str, str], list[str]] = {}
        section = ""
        logical = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not logical and (not line or line[0] in "#;"):
                continue
            if line.endswith("\\"):  # a continuation: systemd joins it with a space
                logical += line[:-1].rstrip() + " "
                continue
            line, logical = logical + line, ""
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            assert sep, f"not a section, comment or assignment: {raw!r}"
            entries.setdefault((section, key.strip()), []).append(value.strip())
        return cls(entries)

    def values(self, section: str, key: str) -> list[str]:
        """The effective list: an empty assignment drops everything before it."""
        out: list[str] = []
        for value in self.entries.get((section, key), []):
            out = [] if value == "" else [*out, value]
        return out

    def last(self, section: str, key: str) -> str | None:
        assigned = self.entries.get((section, key))
        return assigned[-1] if assigned else None

    def flag(self, section: str, key: str) -> bool:
        return (self.last(section, key) or "").lower() in TRUE

    def service(self) -> dict[str, list[str]]:
        return {k: v for (s, k), v in self.entries.items() if s == "Service"}


def load(name: str) -> Unit:
    return Unit.parse((UNITS / name).read_text(encoding="utf-8"))


def command(unit: Unit, key: str) -> list[str]:
    """The one command line of an Exec*= setting, split as systemd splits it."""
    lines = unit.values("Service", key)
    assert len(lines) == 1, f"{key}: expected one command, found {lines}"
    assert lines[0][0] not in "-@:+!", f"{key}: no special prefixes expected: {lines[0]}"
    return shlex.split(lines[0])


DAEMON = load("pithcrawl.service")
NODE = load("pithcrawl@.service")
SYNC = load("pithcrawl-sync.service")
SERVE = load("pithcrawl-serve.service")
TIMER = load("pithcrawl-sync.timer")


def test_parser_keeps_repeated_keys_and_resets_on_empty() -> None:
    """Repeated keys accumulate; an empty assignment clears the list so far."""
    unit = Unit.parse("[Service]\nA=1\nA=2\nB=x\nB=\nB=y \\\n  z\n# c\n")
    assert unit.values("Service", "A") == ["1", "2"]
    assert unit.values("Service", "B") == ["y z"]


def test_daemon_is_a_notify_service_with_a_watchdog() -> None:
    """The daemon speaks sd_notify (READY, WATCHDOG), so the unit must listen for it."""
    assert DAEMON.last("Service", "Type") == "notify"
    assert DAEMON.last("Service", "NotifyAccess") in {None, "main"}
    watchdog = DAEMON.last("Service", "WatchdogSec") or ""
    assert watchdog.rstrip("s").isdigit() and int(watchdog.rstrip("s")) > 0
    assert DAEMON.last("Service", "Restart") == "on-failure"


def test_daemon_reload_sends_sighup_to_the_main_process() -> None:
    """`systemctl reload` is SIGHUP, which the daemon answers by reloading its config."""
    argv = command(DAEMON, "ExecReload")
    assert Path(argv[0]).name == "kill"
    assert {"-HUP", "-SIGHUP", "-1"} & set(argv) or argv[1:3] in (["-s", "HUP"], ["-s", "1"])
    assert argv[-1] == "$MAINPID"


def test_a_config_error_is_not_restarted() -> None:
    """Exit 2 (usage or configuration) cannot be fixed by restarting."""
    assert "2" in " ".join(DAEMON.values("Service", "RestartPreventExitStatus")).split()


@pytest.mark.parametrize(
    ("unit", "subcommand"),
    [(DAEMON, "run"), (SYNC, "sync"), (SERVE, "serve")],
    ids=["run", "sync", "serve"],
)
def test_execstart_parses_with_pithcrawls_own_parser(unit: Unit, subcommand: str) -> None:
    """ExecStart, minus the binary, is a command line `pithcrawl` accepts, with the config."""
    argv = command(unit, "ExecStart")
    assert Path(argv[0]).name == "pithcrawl" and Path(argv[0]).is_absolute()
    args = build_parser().parse_args(argv[1:])
    assert args.command == subcommand
    assert args.config == CONFIG
    assert args.db is None, "the archive's place comes from StateDirectory="


def test_config_lives_in_the_configuration_directory() -> None:
    """The --config file is inside ConfigurationDirectory=, which the sandbox leaves readable."""
    for unit in (DAEMON, SYNC, SERVE):
        (name,) = unit.values("Service", "ConfigurationDirectory")
        assert CONFIG.parent == Path("/etc") / name


def test_both_services_share_one_state_directory() -> None:
    """`run` and `sync` archive into the same $STATE_DIRECTORY/pithcrawl.db, as one user
    (two dynamic users would take the directory from each other: systemd#7090)."""
    assert DAEMON.values("Service", "StateDirectory") == ["pithcrawl"]
    assert SYNC.values("Service", "StateDirectory") == ["pithcrawl"]
    assert SERVE.values("Service", "StateDirectory") == ["pithcrawl"]
    assert DAEMON.last("Service", "User") == SYNC.last("Service", "User")
    assert DAEMON.last("Service", "User") == SERVE.last("Service", "User")
    db = Config().db_path({"STATE_DIRECTORY": "/var/lib/pithcrawl"})
    assert db == Path("/var/lib/pithcrawl/pithcrawl.db")


@pytest.mark.parametrize("unit", [DAEMON, SYNC, SERVE], ids=["run", "sync", "serve"])
def test_runs_as_an_unprivileged_user(unit: Unit) -> None:
    """A dynamic user, or a named one that is not root; no capabilities at all."""
    user = unit.last("Service", "User")
    assert unit.flag("Service", "DynamicUser") or (user and user not in {"root", "0"})
    assert unit.last("Service", "CapabilityBoundingSet") == ""
    assert unit.values("Service", "AmbientCapabilities") == []


@pytest.mark.parametrize("unit", [DAEMON, SYNC, SERVE], ids=["run", "sync", "serve"])
def test_sandbox_is_strict(unit: Unit) -> None:
    """The core of the sandbox: read-only system, no home, no new privileges, native ABI."""
    assert unit.flag("Service", "NoNewPrivileges")
    assert unit.last("Service", "ProtectSystem") == "strict"
    assert unit.last("Service", "ProtectHome") in {"yes", "true", "tmpfs"}
    for key in ("PrivateTmp", "PrivateDevices", "RestrictSUIDSGID", "MemoryDenyWriteExecute"):
        assert unit.flag("Service", key), key
    families = " ".join(unit.values("Service", "RestrictAddressFamilies")).split()
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert unit.last("Service", "SystemCallArchitectures") == "native"
    assert "@system-service" in unit.values("Service", "SystemCallFilter")


def test_sync_has_the_daemons_sandbox() -> None:
    """Apart from what makes each a daemon or a one-shot, both services are set up alike."""
    daemon = {k: v for k, v in DAEMON.service().items() if k not in MODE_KEYS}
    sync = {k: v for k, v in SYNC.service().items() if k not in MODE_KEYS}
    assert sync == daemon


def test_serve_has_the_daemons_sandbox_and_reaches_localhost_only() -> None:
    """The same sandbox as the daemon, and the network closed but to this host: `serve`
    connects to nothing, and its --bind is 127.0.0.1."""
    network = {"IPAddressDeny", "IPAddressAllow"}
    daemon = {k: v for k, v in DAEMON.service().items() if k not in MODE_KEYS | network}
    serve = {k: v for k, v in SERVE.service().items() if k not in MODE_KEYS | network}
    assert serve == daemon
    assert SERVE.values("Service", "IPAddressDeny") == ["any"]
    assert SERVE.values("Service", "IPAddressAllow") == ["localhost"]
    bind = command(SERVE, "ExecStart")[-1]
    assert bind.startswith("127.0.0.1:")
    assert "2" in " ".join(SERVE.values("Service", "RestartPreventExitStatus")).split()
    assert SERVE.values("Install", "WantedBy") == ["multi-user.target"]


def test_sync_is_a_oneshot() -> None:
    """The sync service runs one pass and exits; the timer starts it again."""
    assert SYNC.last("Service", "Type") == "oneshot"
    assert SYNC.values("Service", "ExecReload") == []


def test_timer_starts_the_sync_service() -> None:
    """The timer names the sync service, runs on a calendar, and catches up after downtime."""
    assert TIMER.last("Timer", "Unit") == "pithcrawl-sync.service"
    assert TIMER.values("Timer", "OnCalendar")
    assert TIMER.flag("Timer", "Persistent")
    assert TIMER.values("Install", "WantedBy") == ["timers.target"]


def test_the_daemon_is_enabled_at_boot_and_the_sync_by_its_timer() -> None:
    """Enabling the daemon hooks it into boot; the sync service has nothing to enable."""
    assert DAEMON.values("Install", "WantedBy") == ["multi-user.target"]
    assert not [k for (s, k) in SYNC.entries if s == "Install"]


def test_a_node_instance_is_the_daemon_with_its_own_configuration() -> None:
    """pithcrawl@NAME.service: the daemon's unit in every setting (notify, watchdog,
    reload, sandbox, user), but its configuration /etc/pithcrawl/NAME.toml."""
    argv = command(NODE, "ExecStart")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config == CONFIG.parent / "%i.toml"
    same = {k: v for k, v in DAEMON.service().items() if k != "ExecStart"}
    assert {k: v for k, v in NODE.service().items() if k != "ExecStart"} == same
    assert "%i" in (NODE.last("Unit", "Description") or "")
