"""The command line as a whole: global options, exit codes for every failure, the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pithcrawl.cli import _failed, build_parser, main
from pithcrawl.commands import COMMANDS
from pithcrawl.errors import ConfigError, StoreError
from pithcrawl.findings import CODES

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
CONTRACT_KINDS = [
    "document_invalid", "rollback", "mirror_divergence", "state_url_mismatch", "equivocation",
    "untrusted_key", "key_rotation", "correction", "event_added", "mirror_stale",
    "mirror_unreachable",
]  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "c.toml", "-v", "status"],
        ["status", "--config", "c.toml", "-v"],
        ["--config", "other.toml", "status", "--config", "c.toml", "-v"],
    ],
)
def test_global_options_before_or_after_the_command(argv):
    """An option before the command is not reset by the command's own parser."""
    args = build_parser().parse_args(argv)
    assert args.config == Path("c.toml")
    assert args.verbose == 1


def test_an_error_inside_a_task_group_keeps_its_exit_code(capsys):
    group = ExceptionGroup("tasks", [ExceptionGroup("inner", [StoreError("disk full")])])
    assert _failed(group) == 3
    assert capsys.readouterr().err.strip() == "pithcrawl: disk full"
    assert _failed(ExceptionGroup("tasks", [ConfigError("crawl.timeout: bad")])) == 2


def test_a_bug_is_exit_3_with_its_trace_never_1(capsys):
    """Scripts read exit 1 as a security finding: a crash must not look like one."""
    assert _failed(ExceptionGroup("tasks", [ZeroDivisionError("oops")])) == 3
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err
    assert "internal error" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("pithcrawl ")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_has_help_an_example_and_a_readme_entry(command):
    assert command.help
    assert command.example.startswith("pithcrawl ")
    assert re.search(rf"^#### `{command.name}\b|^### `{command.name}\b", README, re.M), (
        f"README has no section for `{command.name}`"
    )


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_finding_code_is_in_the_readme(code):
    assert f"`{code}`" in README


@pytest.mark.parametrize("kind", CONTRACT_KINDS)
def test_every_alert_kind_is_in_the_readme(kind):
    assert f"`{kind}`" in README


def test_every_config_key_is_documented():
    from pithcrawl.config import config_keys

    reference = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "config" / "pithcrawl.toml").read_text()
    for key in config_keys():
        leaf = key.rsplit(".", 1)[-1]
        assert f"`{key}`" in reference, key
        assert re.search(rf"^#?\s*{leaf}\s*=", example, re.M), key
