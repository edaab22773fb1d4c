"""The README's and docs/' examples, as a reader would type them (in the way sqlite-utils
tests its documentation): every `pithcrawl` command line in a shell block parses with
today's command line (no flag renamed under the docs' feet), and those that need nothing
outside the checkout (`verify` of a shipped fixture) run and say what the docs say."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pithcrawl.cli import build_parser, main

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Where a command line ends for us: a pipe, a redirection, a second command.
_STOP = {"|", ">", ">>", "2>", "2>>", "&&", "||", ";"}
#: How the docs name the program (a unit's name, `-u pithcrawl`, is not a command).
_PROGRAMS = {"pithcrawl", ".venv/bin/pithcrawl", "/usr/local/bin/pithcrawl"}


def _cron(words: list[str]) -> bool:
    """Whether `words` are a crontab line's five schedule fields."""
    return len(words) == 5 and all(re.fullmatch(r"[0-9*/,-]+", w) for w in words)


def _shell_lines(page: Path) -> list[tuple[str, str]]:
    """(page:line, text) of each line in the page's ```sh blocks, continuations joined."""
    out: list[tuple[str, str]] = []
    inside, pending, start = False, "", 0
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        if not inside:
            continue
        pending, start = (pending + " " + line.rstrip("\\"), start) if pending else (line, n)
        if line.endswith("\\"):
            pending = pending.rstrip("\\")
            continue
        out.append((f"{page.name}:{start}", pending))
        pending = ""
    return out


def _commands() -> list[tuple[str, list[str]]]:
    """Each `pithcrawl …` command of the docs' shell blocks, as its argument list."""
    found = []
    for page in PAGES:
        for where, line in _shell_lines(page):
            code = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0]
            try:
                words = shlex.split(code)
            except ValueError:
                continue
            for i, word in enumerate(words):
                if word in _PROGRAMS and (i == 0 or words[i - 1] in _STOP or _cron(words[:i])):
                    argv = []
                    for w in words[i + 1 :]:
                        if w in _STOP or w.startswith((">", "2>")):
                            break
                        argv.append(w)
                    found.append((where, argv))
    return found


COMMANDS = _commands()


def test_the_docs_have_examples_to_check() -> None:
    assert len(COMMANDS) >= 20
    assert {argv[0] for _, argv in COMMANDS if argv} >= {"verify", "sync", "status", "history"}


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_example_parses_with_todays_command_line(where: str, argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `pithcrawl {' '.join(argv)}` does not parse (exit {e.code})")


def test_the_offline_examples_run_and_print_what_the_readme_shows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify` of the shipped fixture, from the checkout's root as the README runs it:
    exit 0, and the very line the README prints under it."""
    monkeypatch.chdir(ROOT)
    offline = [
        (where, argv)
        for where, argv in COMMANDS
        if argv[:1] == ["verify"]
        and all(Path(a).exists() for a in argv[1:] if "/" in a)
        and any(a.startswith("tests/fixtures/") for a in argv)
    ]
    assert offline
    readme = (ROOT / "README.md").read_text()
    for where, argv in offline:
        assert main(argv) == 0, where
        out = capsys.readouterr().out
        assert f"# {out.strip()}" in readme, f"{where}: prints {out.strip()!r}"
