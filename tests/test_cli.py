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
COMMANDS_DOC = (ROOT / "docs" / "commands.md").read_text()
ALERTS_DOC = (ROOT / "docs" / "alerts.md").read_text()
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
def test_every_command_has_help_an_example_a_reference_section_and_a_readme_row(command):
    assert command.help
    assert command.example.startswith("pithcrawl ")
    assert re.search(rf"^## `{command.name}\b", COMMANDS_DOC, re.M), (
        f"docs/commands.md has no section for `{command.name}`"
    )
    assert re.search(rf"^\| `{command.name}\b", README, re.M) or re.search(
        rf"^\| `[a-z]+ [^|]*`, `{command.name}\b", README, re.M
    ), f"README's command table has no row for `{command.name}`"


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_finding_code_is_in_the_reference(code):
    assert f"`{code}`" in COMMANDS_DOC


@pytest.mark.parametrize("kind", CONTRACT_KINDS)
def test_every_alert_kind_is_in_the_alerts_reference(kind):
    assert f"`{kind}`" in ALERTS_DOC


def test_every_config_key_is_documented():
    from pithcrawl.config import config_keys

    reference = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "config" / "pithcrawl.toml").read_text()
    for key in config_keys():
        leaf = key.rsplit(".", 1)[-1]
        assert f"`{key}`" in reference, key
        assert re.search(rf"^#?\s*{leaf}\s*=", example, re.M), key


def test_the_readme_is_a_front_door():
    """The README stays short (the reference is in docs/) and links every docs/ file."""
    assert len(README.encode()) <= 12 * 1024
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{doc.name})" in README, f"README does not link docs/{doc.name}"


def test_relative_links_of_the_docs_lead_somewhere():
    """Every relative link of the README and of docs/ names a file that exists."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"(https?:|mailto:|#)", target):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.name}: a link to {target}, which does not exist"
