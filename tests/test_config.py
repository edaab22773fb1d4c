"""The configuration file: defaults, the example, the reference table, and every error."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path

import pytest

from pithcrawl.config import (
    DEFAULT_MIRRORS,
    AlertsConfig,
    Config,
    CrawlConfig,
    MetricsConfig,
    MirrorConfig,
    TrustConfig,
    WatchConfig,
    config_keys,
    default_db_path,
    load_config,
    parse_config,
)
from pithcrawl.errors import ConfigError, UsageError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "pithcrawl.toml"
REFERENCE = ROOT / "docs" / "configuration.md"
SUFFIX = "2SZ3GMWFCMMCUPZJQTONOWSJZ2"

_SETTING = re.compile(r"^(?:# )?(?:\[\[?([a-z_]+)\]\]?|([a-z_]+) = )")


def example_settings(text: str) -> set[str]:
    """The dotted keys a TOML example sets, counting `# key = value` lines."""
    found: set[str] = set()
    section = ""
    for line in text.splitlines():
        m = _SETTING.match(line)
        if m and m.group(1):
            section = m.group(1)
        elif m:
            found.add(f"{section}.{m.group(2)}" if section else m.group(2))
    return found


def test_empty_config_gives_the_documented_defaults(tmp_path: Path) -> None:
    """An empty file is `Config()`, with the contract's values."""
    config = parse_config("", base_dir=tmp_path)
    assert config == Config()
    assert config.db is None
    assert config.key_files == ()
    assert config.trust == TrustConfig(keys=(), clock_skew=timedelta(minutes=5))
    assert not config.trust.follow_rotations
    assert config.crawl == CrawlConfig(
        interval=timedelta(hours=6),
        concurrency=32,
        per_host=4,
        timeout=timedelta(seconds=30),
        max_bytes=16_000_000,
        contact="",
        discover=True,
        allow_private_hosts=False,
    )
    assert config.watch == WatchConfig(pith=())
    assert config.alerts == AlertsConfig(
        hook=None,
        webhook=None,
        webhook_secret_file=None,
        stale_after=timedelta(days=2),
        unreachable_after=timedelta(days=1),
        hook_timeout=timedelta(seconds=30),
    )
    assert config.metrics == MetricsConfig(bind="")


def test_default_mirrors_are_the_registry_manifest_and_base() -> None:
    """Without [[mirrors]]: the registry's manifest and https://pith.science."""
    assert Config().mirrors == DEFAULT_MIRRORS
    by_name = {m.name: m for m in DEFAULT_MIRRORS}
    assert by_name["pith.science"].base_url == "https://pith.science"
    manifests = [m.manifest for m in DEFAULT_MIRRORS if m.manifest is not None]
    assert manifests == ["https://pith.science/pith-mirrors.json"]


def test_default_url_patterns_follow_the_format() -> None:
    """A base_url mirror's URLs are the format's, with the 26-character suffix."""
    mirror = parse_config('[[mirrors]]\nbase_url = "http://127.0.0.1:8787/"').mirrors[0]
    assert mirror.name == "127.0.0.1:8787"
    assert mirror.base_url == "http://127.0.0.1:8787"
    assert mirror.bundle_url(SUFFIX) == f"http://127.0.0.1:8787/pith/{SUFFIX}/bundle.json"
    assert mirror.state_url(SUFFIX) == f"http://127.0.0.1:8787/pith/{SUFFIX}/state.json"
    assert mirror.well_known_url(SUFFIX) == (
        f"http://127.0.0.1:8787/.well-known/pith/{SUFFIX}/bundle.json"
    )


def test_custom_url_patterns_are_kept() -> None:
    """A pattern may be any URL holding {suffix}."""
    text = """
[[mirrors]]
name = "cdn"
base_url = "https://cdn.example"
bundle_pattern = "https://other.example/b/{suffix}.json"
state_pattern = "{base_url}/s/{suffix}"
"""
    mirror = parse_config(text).mirrors[0]
    assert mirror.bundle_url(SUFFIX) == f"https://other.example/b/{SUFFIX}.json"
    assert mirror.state_url(SUFFIX) == f"https://cdn.example/s/{SUFFIX}"


def test_manifest_mirror_is_named_after_its_host() -> None:
    """A manifest entry without a name is called after the manifest's host."""
    mirror = parse_config('[[mirrors]]\nmanifest = "https://m.example/x.json"').mirrors[0]
    assert mirror == MirrorConfig(name="m.example-manifest", manifest="https://m.example/x.json")


def test_example_file_parses() -> None:
    """config/pithcrawl.toml is a valid configuration."""
    config = load_config(EXAMPLE)
    # The registry's manifest and pith.science, until the operator lists their own.
    assert config.mirrors == Config().mirrors
    assert config.watch.pith == (f"pith:2026:{SUFFIX}",)
    assert config.crawl == CrawlConfig()
    assert config.trust == TrustConfig()


def test_example_file_parses_with_every_setting_enabled(tmp_path: Path) -> None:
    """Uncommenting every `# key = value` line of the example still gives a valid config."""
    text = EXAMPLE.read_text(encoding="utf-8")
    enabled = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", text)
    config = parse_config(enabled, base_dir=tmp_path)
    assert config.db == tmp_path / "pithcrawl.db"
    assert config.key_files == (tmp_path / "pith-v1-2026-05.key.json",)
    assert [m.name for m in config.mirrors] == ["local", "registry"]
    assert config.alerts.hook == Path("/usr/local/bin/on-pith-alert")
    assert config.alerts.webhook == "https://alerts.example/pith"


def test_every_key_is_in_the_example_file() -> None:
    """Each dataclass field appears in config/pithcrawl.toml, in its section."""
    settings = example_settings(EXAMPLE.read_text(encoding="utf-8"))
    assert set(config_keys()) <= settings
    assert settings <= set(config_keys())


def test_every_key_is_in_the_reference_table() -> None:
    """Each dataclass field has a row in docs/configuration.md, and no row is stale."""
    table = REFERENCE.read_text(encoding="utf-8").split("\n## Keys\n")[1].split("\n## ")[0]
    rows = re.findall(r"(?m)^\| `([a-z_.]+)` \|", table)
    assert sorted(rows) == sorted(config_keys())


def test_config_keys_are_dotted_paths() -> None:
    """config_keys lists the top-level key and section.key for the rest."""
    keys = config_keys()
    assert "db" in keys
    assert "crawl.timeout" in keys
    assert "mirrors.base_url" in keys
    assert "alerts.hook_timeout" in keys
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("6h", timedelta(hours=6)),
        ("2d", timedelta(days=2)),
        ("90", timedelta(seconds=90)),
        ("1.5h", timedelta(minutes=90)),
        ("1h30m", timedelta(minutes=90)),
        ("2d 12h", timedelta(days=2, hours=12)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    """Durations take s, m, h and d, and compounds of them as contract.md says (a bare
    number is seconds)."""
    assert parse_config(f'[crawl]\ntimeout = "{text}"').crawl.timeout == expected


def test_clock_skew_and_the_hold_down_may_be_zero() -> None:
    """A zero clock skew means exact clocks, a zero hold-down alerts that close as soon
    as they clear; no other duration may be zero."""
    assert parse_config('[trust]\nclock_skew = "0s"').trust.clock_skew == timedelta(0)
    assert parse_config('[alerts]\nresolve_after = "0s"').alerts.resolve_after == timedelta(0)
    with pytest.raises(ConfigError, match=r"alerts\.stale_after"):
        parse_config('[alerts]\nstale_after = "0s"')


BAD = [
    ("unknown top-level key", "dbs = 'x'", "dbs"),
    ("unknown section key", "[crawl]\ntimout = '30s'", "crawl.timout"),
    ("unknown mirror key", "[[mirrors]]\nbase_url = 'http://a'\nurl = 'x'", "mirrors[0].url"),
    ("section not a table", "crawl = 3", "crawl"),
    ("db not a string", "db = 3", "db"),
    ("empty db", "db = ''", "db"),
    ("home-relative path", "db = '~/pithcrawl.db'", "db"),
    ("keys not a list", "[trust]\nkeys = 'a.json'", "trust.keys"),
    ("key not a string", "[trust]\nkeys = ['a.json', 3]", "trust.keys[1]"),
    ("bool not a bool", "[trust]\nfollow_rotations = 'yes'", "trust.follow_rotations"),
    ("int not an int", "[crawl]\nconcurrency = '32'", "crawl.concurrency"),
    ("bool for an int", "[crawl]\nconcurrency = true", "crawl.concurrency"),
    ("float for an int", "[crawl]\nmax_bytes = 1e6", "crawl.max_bytes"),
    ("concurrency < 1", "[crawl]\nconcurrency = 0", "crawl.concurrency"),
    ("per_host < 1", "[crawl]\nper_host = -1", "crawl.per_host"),
    ("max_bytes < 1024", "[crawl]\nmax_bytes = 1023", "crawl.max_bytes"),
    ("bad duration", "[crawl]\ntimeout = '30 seconds'", "crawl.timeout"),
    ("negative duration", "[crawl]\ninterval = '-1h'", "crawl.interval"),
    ("zero duration", "[alerts]\nstale_after = '0s'", "alerts.stale_after"),
    ("huge duration", "[alerts]\nhook_timeout = '99999999999999d'", "alerts.hook_timeout"),
    ("duration as int", "[crawl]\ntimeout = 30", "crawl.timeout"),
    ("contact with newline", '[crawl]\ncontact = "a\\nb"', "crawl.contact"),
    ("mirrors as a table", "[mirrors]\nbase_url = 'http://a'", "mirrors"),
    ("mirrors empty", "mirrors = []", "mirrors"),
    ("mirror with neither", "[[mirrors]]\nname = 'a'", "mirrors[0]"),
    ("mirror with both", "[[mirrors]]\nbase_url = 'http://a'\nmanifest = 'http://b'", "mirrors[0]"),
    ("ftp base_url", "[[mirrors]]\nbase_url = 'ftp://a'", "mirrors[0].base_url"),
    ("hostless base_url", "[[mirrors]]\nbase_url = 'http://'", "mirrors[0].base_url"),
    ("relative base_url", "[[mirrors]]\nbase_url = 'pith.science'", "mirrors[0].base_url"),
    ("bad port", "[[mirrors]]\nbase_url = 'http://a:x'", "mirrors[0].base_url"),
    ("query in base_url", "[[mirrors]]\nbase_url = 'http://a/?q=1'", "mirrors[0].base_url"),
    ("bad manifest", "[[mirrors]]\nmanifest = 'file:///m.json'", "mirrors[0].manifest"),
    (
        "second mirror's url",
        "[[mirrors]]\nbase_url = 'http://a'\n[[mirrors]]\nbase_url = 'mailto:x@y'",
        "mirrors[1].base_url",
    ),
    (
        "duplicate names",
        "[[mirrors]]\nname = 'a'\nbase_url = 'http://a'\n[[mirrors]]\nname = 'a'\nbase_url = 'http://b'",
        "mirrors[1].name",
    ),
    ("empty name", "[[mirrors]]\nname = ''\nbase_url = 'http://a'", "mirrors[0].name"),
    (
        "pattern without suffix",
        "[[mirrors]]\nbase_url = 'http://a'\nbundle_pattern = '{base_url}/b.json'",
        "mirrors[0].bundle_pattern",
    ),
    (
        "pattern with another placeholder",
        "[[mirrors]]\nbase_url = 'http://a'\nstate_pattern = '{host}/{suffix}'",
        "mirrors[0].state_pattern",
    ),
    (
        "pattern not a URL",
        "[[mirrors]]\nbase_url = 'http://a'\nwell_known_pattern = '/{suffix}'",
        "mirrors[0].well_known_pattern",
    ),
    (
        "pattern on a manifest",
        "[[mirrors]]\nmanifest = 'http://a/m.json'\nbundle_pattern = '{suffix}'",
        "mirrors[0].bundle_pattern",
    ),
    ("pith not a list", "[watch]\npith = 'pith:2026:X'", "watch.pith"),
    ("bad pith", "[watch]\npith = ['pith:2026:TOOSHORT']", "watch.pith[0]"),
    ("bad webhook", "[alerts]\nwebhook = 'alerts.example'", "alerts.webhook"),
    ("secret without webhook", "[alerts]\nwebhook_secret_file = 's'", "alerts.webhook_secret_file"),
    ("hook not a string", "[alerts]\nhook = ['a']", "alerts.hook"),
    ("bind without port", "[metrics]\nbind = '127.0.0.1'", "metrics.bind"),
    ("bind port out of range", "[metrics]\nbind = '127.0.0.1:70000'", "metrics.bind"),
]


@pytest.mark.parametrize(("text", "key"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    """Each kind of bad value is a ConfigError whose message starts with the key path."""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, base_dir=tmp_path)
    assert str(raised.value).startswith(f"{key}:") or str(raised.value).startswith(f"{key}.")


def test_bad_value_is_in_the_message() -> None:
    """The message shows the bad value as written."""
    with pytest.raises(ConfigError, match=r"^crawl\.timeout: .*'30 seconds'"):
        parse_config('[crawl]\ntimeout = "30 seconds"')


def test_unknown_key_suggests_the_near_one() -> None:
    """A misspelt key is answered with the key it is closest to."""
    with pytest.raises(ConfigError, match="did you mean 'timeout'"):
        parse_config('[crawl]\ntimout = "30s"')


def test_toml_syntax_error_names_the_line() -> None:
    """A TOML syntax error is a ConfigError with the line number."""
    with pytest.raises(ConfigError, match=r"line 3"):
        parse_config('[crawl]\ntimeout = "30s"\ninterval = \n')


def test_config_error_is_a_usage_error() -> None:
    """Configuration errors exit with the usage code (2)."""
    with pytest.raises(UsageError) as raised:
        parse_config("nope = 1")
    assert raised.value.exit_code == 2


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    """db, trust.keys, alerts.hook and the secret file are relative to the file's directory."""
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "pithcrawl.toml"
    path.write_text(
        'db = "../var/pith.db"\n'
        '[trust]\nkeys = ["keys/a.json", "/abs/b.json"]\n'
        '[alerts]\nhook = "hook.sh"\nwebhook = "https://h.example/"\n'
        'webhook_secret_file = "./secret"\n',
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.db == tmp_path / "var" / "pith.db"
    assert config.key_files == (tmp_path / "etc" / "keys" / "a.json", Path("/abs/b.json"))
    assert config.alerts.hook == tmp_path / "etc" / "hook.sh"
    assert config.alerts.webhook_secret_file == tmp_path / "etc" / "secret"
    assert all(p.is_absolute() for p in config.key_files)


def test_parse_config_resolves_against_base_dir(tmp_path: Path) -> None:
    """parse_config resolves relative paths against base_dir."""
    assert parse_config('db = "x.db"', base_dir=tmp_path).db == tmp_path / "x.db"


def test_configured_db_wins_over_the_environment(tmp_path: Path) -> None:
    """db_path gives the configured db, else the environment's default."""
    env = {"STATE_DIRECTORY": "/var/lib/pithcrawl"}
    assert parse_config('db = "a.db"', base_dir=tmp_path).db_path(env) == tmp_path / "a.db"
    assert Config().db_path(env) == Path("/var/lib/pithcrawl/pithcrawl.db")


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    """A bad key in a file is reported with the file's path and the key."""
    path = tmp_path / "bad.toml"
    path.write_text("[crawl]\nper_host = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: crawl\.per_host: .*0"):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A missing config file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")


def test_load_config_not_utf8(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[crawl]\ncontact = "Jos\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


HOME_DB = "/home/u/.local/share/pithcrawl/pithcrawl.db"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/pithcrawl"}, "/var/lib/pithcrawl/pithcrawl.db"),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a/pithcrawl.db"),
        (
            {"STATE_DIRECTORY": "/s", "XDG_DATA_HOME": "/x", "HOME": "/home/u"},
            "/s/pithcrawl.db",
        ),
        ({"XDG_DATA_HOME": "/x", "HOME": "/home/u"}, "/x/pithcrawl/pithcrawl.db"),
        ({"HOME": "/home/u"}, HOME_DB),
        ({"XDG_DATA_HOME": "", "HOME": "/home/u"}, HOME_DB),
        ({"XDG_DATA_HOME": "rel", "HOME": "/home/u"}, HOME_DB),  # XDG: ignore a relative one
        ({"STATE_DIRECTORY": "", "HOME": "/home/u"}, HOME_DB),
    ],
)
def test_default_db_path(env: dict[str, str], expected: str) -> None:
    """systemd's STATE_DIRECTORY first, then XDG_DATA_HOME, then ~/.local/share."""
    assert default_db_path(env) == Path(expected)


@pytest.mark.parametrize(
    ("instance", "name"),
    [
        (Config(), "db"),
        (Config(), "mirrors"),
        (TrustConfig(), "keys"),
        (CrawlConfig(), "timeout"),
        (MirrorConfig(name="a", base_url="http://a"), "base_url"),
        (WatchConfig(), "pith"),
        (AlertsConfig(), "hook"),
        (MetricsConfig(), "bind"),
    ],
)
def test_dataclasses_are_frozen(instance: object, name: str) -> None:
    """Every config value is immutable."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(instance, name, None)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[crawl]\ninterval = "99999999d"\n', "crawl.interval"),
        ('[trust]\nclock_skew = "99999999d"\n', "trust.clock_skew"),
        ('[alerts]\nunreachable_after = "99999999d"\n', "alerts.unreachable_after"),
        ("[crawl]\nconcurrency = 1000000000\n", "crawl.concurrency"),
        ("[crawl]\nper_host = 100000\n", "crawl.per_host"),
        ("[crawl]\nworkers = 100000\n", "crawl.workers"),
        ('[[mirrors]]\nname = "x"\nbase_url = "https://a..b"\n', "mirrors"),
        ('[[mirrors]]\nname = "x"\nbase_url = "https://' + "a" * 64 + '.org"\n', "mirrors"),
    ],
)
def test_a_value_past_what_pithcrawl_can_use_is_refused_at_load(toml: str, key: str) -> None:
    """Refused when read, naming the key (a duration a date cannot be moved by, or tasks
    by the million, used to end a pass later with a traceback or exhaust memory)."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config(toml)
