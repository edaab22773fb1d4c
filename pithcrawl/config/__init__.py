"""The operator's configuration: a frozen dataclass tree, its defaults and its TOML parser.

Owns every key of the configuration file (contract.md, "Configuration"), its default, the
rules particular to one key (a mirror's patterns, a Pith Number, a bind address, …), the
entry points `load_config` and `parse_config`, and where relative paths point: the
config file's directory.

Every `ConfigError` names the full key path, e.g. `mirrors[1].base_url`, and the bad
value. Checking a single value's type and form (integers, durations, URLs, paths, unknown
keys) is `toml`'s, not this module's. Nor does it load trust keys, open the database,
fetch a manifest or read the environment:
`default_db_path` takes the environment as a parameter, and only `load_config` reads a file.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pithcrawl.config.toml import Table, bad, check_url, table
from pithcrawl.errors import ConfigError
from pithcrawl.location import Where

REGISTRY_BASE_URL = "https://pith.science"
REGISTRY_MANIFEST_URL = "https://pith.science/pith-mirrors.json"
DEFAULT_BUNDLE_PATTERN = "{base_url}/pith/{suffix}/bundle.json"
DEFAULT_STATE_PATTERN = "{base_url}/pith/{suffix}/state.json"
DEFAULT_WELL_KNOWN_PATTERN = "{base_url}/.well-known/pith/{suffix}/bundle.json"
DB_FILENAME = "pithcrawl.db"
#: The most fetches in flight `crawl.concurrency` may ask for: each is a task and a
#: connection, and past a few thousand they only contend for the same CPU and sockets.
CONCURRENCY_MAX = 4096

_PATTERN_KEYS = ("bundle_pattern", "state_pattern", "well_known_pattern")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SAMPLE_SUFFIX = "A" * 26
_PITH = re.compile(r"(?:pith:\d{4}:)?[A-Z2-7]{26}\Z")
_BIND = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})\Z")


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """`[trust]`: the keys whose signatures pithcrawl accepts."""

    keys: tuple[Path, ...] = ()  # absolute; empty: the registry key shipped in the package
    clock_skew: timedelta = timedelta(minutes=5)
    follow_rotations: bool = False


@dataclass(frozen=True, slots=True)
class CrawlConfig:
    """`[crawl]`: how often and how hard mirrors are fetched."""

    interval: timedelta = timedelta(hours=6)
    concurrency: int = 32
    per_host: int = 4
    timeout: timedelta = timedelta(seconds=30)
    max_bytes: int = 16_000_000
    contact: str = ""
    discover: bool = True
    allow_private_hosts: bool = False
    workers: int = 0
    """Processes a large `sync` pass is split across (0: one per CPU it may use)."""
    source_address: str | None = None
    """The local address every outgoing connection is bound to (None: the system's
    choice): a node with several networks fetches from the one its vantage names."""


#: What a node or vantage may be called: it is printed, logged and put in hooks'
#: environments, so a short, plain name.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


@functools.cache
def host_name() -> str:
    """This machine's host name as a node name: its first label, anything outside
    `NODE_NAME`'s characters replaced by `-` (\"node\" when nothing is left)."""
    label = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", label).strip("-._")[:63]
    return name or "node"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """`[node]`: this crawler, among the nodes that may share one archive."""

    name: str = ""
    """Recorded with every snapshot this node fetches ("": the host name)."""
    vantage: str = ""
    """Where on the network it fetches from ("": the node's name): nodes of one vantage
    share the work, each vantage sees every mirror."""
    lease: timedelta | None = None
    """How long a pair is this node's once taken (`run`): it is cut short, and failed,
    when its fetches take longer; a node killed holds its pairs that long. None: five
    `crawl.timeout`s (`Config.lease`)."""

    @property
    def node_name(self) -> str:
        return self.name or host_name()

    @property
    def vantage_name(self) -> str:
        return self.vantage or self.node_name


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """One `[[mirrors]]` entry: a mirror at `base_url`, or a `manifest` listing mirrors."""

    name: str
    base_url: str | None = None  # without a trailing slash
    manifest: str | None = None
    bundle_pattern: str = DEFAULT_BUNDLE_PATTERN
    state_pattern: str = DEFAULT_STATE_PATTERN
    well_known_pattern: str = DEFAULT_WELL_KNOWN_PATTERN

    def bundle_url(self, suffix: str) -> str:
        return self._expand(self.bundle_pattern, suffix)

    def state_url(self, suffix: str) -> str:
        return self._expand(self.state_pattern, suffix)

    def well_known_url(self, suffix: str) -> str:
        return self._expand(self.well_known_pattern, suffix)

    def _expand(self, pattern: str, suffix: str) -> str:
        if self.base_url is None:
            raise ValueError(f"mirror {self.name!r} is a manifest; its mirrors have the URLs")
        # str.replace, not str.format: a URL may hold other braces.
        return pattern.replace("{base_url}", self.base_url).replace("{suffix}", suffix)


def _default_name(base_url: str | None, manifest: str | None) -> str:
    if base_url is not None:
        return urlsplit(base_url).netloc
    return f"{urlsplit(manifest or '').netloc}-manifest"


DEFAULT_MIRRORS = (
    MirrorConfig(name=_default_name(None, REGISTRY_MANIFEST_URL), manifest=REGISTRY_MANIFEST_URL),
    MirrorConfig(name=_default_name(REGISTRY_BASE_URL, None), base_url=REGISTRY_BASE_URL),
)


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """`[watch]`: records tracked from the configuration, besides those added by `track`."""

    pith: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """`[alerts]`: where alerts are delivered and when a lagging mirror becomes one."""

    hook: Path | None = None
    webhook: str | None = None
    webhook_secret_file: Path | None = None
    stale_after: timedelta = timedelta(days=2)
    unreachable_after: timedelta = timedelta(days=1)
    hook_timeout: timedelta = timedelta(seconds=30)
    resolve_after: timedelta = timedelta(minutes=30)
    """The hold-down: an alert closes once its condition has stayed clear this long."""
    split_grace: timedelta | None = None
    """How long a vantage may keep being served an older bundle than another vantage
    was, by one mirror, before that is a `vantage_split` (a CDN's caches lag); None: one
    `crawl.interval` (`Config.split_grace`)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`[metrics]`: the Prometheus endpoint of `run`; an empty `bind` turns it off."""

    bind: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file; `Config()` is an empty file."""

    db: Where | None = None  # a path (absolute) or a URL; None: `default_db_path` of the env
    trust: TrustConfig = field(default_factory=TrustConfig)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    mirrors: tuple[MirrorConfig, ...] = DEFAULT_MIRRORS
    watch: WatchConfig = field(default_factory=WatchConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    node: NodeConfig = field(default_factory=NodeConfig)

    @property
    def key_files(self) -> tuple[Path, ...]:
        """The configured trust key files; empty means the shipped registry key."""
        return self.trust.keys

    @property
    def split_grace(self) -> timedelta:
        """`alerts.split_grace`, one `crawl.interval` unless set."""
        grace = self.alerts.split_grace
        return self.crawl.interval if grace is None else grace

    @property
    def lease(self) -> timedelta:
        """`node.lease`, five `crawl.timeout`s unless set: a pair's bundle and state.json,
        each with a fallback URL, fit in it."""
        lease = self.node.lease
        return 5 * self.crawl.timeout if lease is None else lease

    @property
    def lease_margin(self) -> timedelta:
        """How long before its lease ends a pair still being fetched is cut short (its
        write must be done before another node may take it): 5 s, or a tenth of the lease
        if that is shorter."""
        return min(timedelta(seconds=5), self.lease / 10)

    @property
    def vantage_alive(self) -> timedelta:
        """How recently a node of a vantage must have crawled for what that vantage last
        saw to count as what it sees now (two intervals, or `alerts.unreachable_after`)."""
        return max(2 * self.crawl.interval, self.alerts.unreachable_after)

    def db_path(self, env: Mapping[str, str]) -> Where:
        """The configured database, else the default for this environment."""
        return self.db if self.db is not None else default_db_path(env)


# The sections of the file and the dataclass each one fills; `mirrors` is an array of tables.
_SECTIONS: dict[str, type[Any]] = {
    "trust": TrustConfig,
    "crawl": CrawlConfig,
    "mirrors": MirrorConfig,
    "watch": WatchConfig,
    "alerts": AlertsConfig,
    "metrics": MetricsConfig,
    "node": NodeConfig,
}


def config_keys() -> list[str]:
    """Every dotted key of the file ("db", "crawl.timeout", "mirrors.base_url", …)."""
    keys: list[str] = []
    for top in dataclasses.fields(Config):
        section = _SECTIONS.get(top.name)
        if section is None:
            keys.append(top.name)
        else:
            keys.extend(f"{top.name}.{f.name}" for f in dataclasses.fields(section))
    return keys


def default_db_path(env: Mapping[str, str]) -> Path:
    """`$STATE_DIRECTORY` (systemd; the first of several), else the XDG data directory."""
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / DB_FILENAME
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore a relative one
        data = Path(xdg)
    else:
        home = env.get("HOME")
        data = (Path(home) if home else Path.home()) / ".local" / "share"
    return data / "pithcrawl" / DB_FILENAME


#: The most bytes read from a file the operator names (the configuration, a key, the
#: webhook secret): `/dev/zero`, or a stream that never ends, must not fill memory.
FILE_MAX = 1 << 20


def read_bounded(path: Path, what: str, limit: int = FILE_MAX) -> bytes:
    """The bytes of `path`, a regular file, at most `limit` of them (`ConfigError`
    naming `what` for anything else); `OSError` if it cannot be read.

    Opened without blocking and refused unless a regular file: a FIFO would have held
    the command, or the daemon's reload (and with it every fetch, SIGTERM and the
    watchdog) until someone wrote to it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{what} {path}: larger than {limit} bytes (is it the right file?)")
    return data


def load_config(path: Path) -> Config:
    """Read and parse a config file; relative paths in it are relative to its directory."""
    try:
        text = read_bounded(path, "config file").decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from e
    try:
        return parse_config(text, base_dir=Path(os.path.abspath(path)).parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def parse_config(text: str, *, base_dir: Path | None = None) -> Config:
    """Parse a config file's text; relative paths resolve against `base_dir` (default: cwd)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}") from e
    root = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))
    top = table(raw, "", Config, root)
    config = Config(
        db=top.archive("db"),
        trust=_trust(top.section("trust", TrustConfig)),
        crawl=_crawl(top.section("crawl", CrawlConfig)),
        mirrors=_mirrors(raw.get("mirrors"), root),
        watch=_watch(top.section("watch", WatchConfig)),
        alerts=_alerts(top.section("alerts", AlertsConfig)),
        metrics=_metrics(top.section("metrics", MetricsConfig)),
        node=_node(top.section("node", NodeConfig)),
    )
    if config.lease - config.lease_margin < 2 * config.crawl.timeout:
        # A pair is at least two fetches (its bundle, its state.json), cut short 5 s (or a
        # tenth of the lease) before the lease ends.
        fetches = 2 * config.crawl.timeout.total_seconds()
        least = fetches + 5 if fetches + 5 >= 50 else math.ceil(fetches / 0.9 * 10) / 10
        raise bad(
            "node.lease",
            f"expected at least {least:g}s with crawl.timeout"
            f" {config.crawl.timeout.total_seconds():g}s: a pair's two fetches, and the"
            " margin it is cut short by before its lease ends",
            raw["node"]["lease"],
        )
    return config


def _trust(t: Table) -> TrustConfig:
    d = TrustConfig()
    return TrustConfig(
        keys=t.paths("keys"),
        clock_skew=t.duration("clock_skew", d.clock_skew, allow_zero=True),
        follow_rotations=t.boolean("follow_rotations", d.follow_rotations),
    )


def _crawl(t: Table) -> CrawlConfig:
    d = CrawlConfig()
    contact = t.string("contact", d.contact)
    if not (contact.isascii() and contact.isprintable()):  # it goes into an HTTP header
        raise bad(t.key("contact"), "expected printable ASCII", contact)
    return CrawlConfig(
        interval=t.duration("interval", d.interval),
        concurrency=t.integer("concurrency", d.concurrency, minimum=1, maximum=CONCURRENCY_MAX),
        per_host=t.integer("per_host", d.per_host, minimum=1, maximum=CONCURRENCY_MAX),
        timeout=t.duration("timeout", d.timeout),
        max_bytes=t.integer("max_bytes", d.max_bytes, minimum=1024),
        contact=contact,
        discover=t.boolean("discover", d.discover),
        allow_private_hosts=t.boolean("allow_private_hosts", d.allow_private_hosts),
        workers=t.integer("workers", d.workers, minimum=0, maximum=CONCURRENCY_MAX),
        source_address=_address(t),
    )


def _address(t: Table) -> str | None:
    if "source_address" not in t.raw:
        return None
    text = t.string("source_address", "")
    try:
        if "%" in text:  # a zone id ("fe80::1%eth0"): the connection could not keep it
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise bad(t.key("source_address"), "expected an IP address of this machine", text) from None
    # The kernel picks the source itself for these: the vantage would be a fiction.
    if address.is_multicast or address.is_unspecified or text == "255.255.255.255":
        raise bad(t.key("source_address"), "expected a unicast address of this machine", text)
    return str(address)


def _node(t: Table) -> NodeConfig:
    names = {}
    for key in ("name", "vantage"):
        value = t.string(key, "")
        if key in t.raw and not NODE_NAME.match(value):
            raise bad(
                t.key(key), "expected 1-63 of A-Z a-z 0-9 . _ -, not starting with . _ or -", value
            )
        names[key] = value
    lease = t.duration("lease", timedelta(0)) if "lease" in t.raw else None
    return NodeConfig(**names, lease=lease)


def _mirrors(raw: object, root: Path) -> tuple[MirrorConfig, ...]:
    if raw is None:
        return DEFAULT_MIRRORS
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise bad("mirrors", "expected [[mirrors]] tables", raw)
    if not raw:
        raise ConfigError("mirrors: empty; leave the key out to use the default mirrors")
    mirrors: list[MirrorConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        mirror = _mirror(table(item, f"mirrors[{i}]", MirrorConfig, root))
        if mirror.name in seen:
            raise bad(
                f"mirrors[{i}].name", f"duplicate of mirrors[{seen[mirror.name]}]", mirror.name
            )
        seen[mirror.name] = i
        mirrors.append(mirror)
    return tuple(mirrors)


def _mirror(t: Table) -> MirrorConfig:
    base_url, manifest = t.url("base_url"), t.url("manifest")
    if base_url is not None and manifest is not None:
        raise ConfigError(f"{t.key('manifest')}: give base_url or manifest, not both")
    if base_url is None and manifest is None:
        raise ConfigError(f"{t.where}: give base_url or manifest; found neither")
    if base_url is not None:
        base_url = base_url.rstrip("/")
        if urlsplit(base_url).query or urlsplit(base_url).fragment:
            raise bad(t.key("base_url"), "expected no query or fragment", base_url)
    patterns: dict[str, str] = {}
    for name in _PATTERN_KEYS:
        if name not in t.raw:
            continue
        if base_url is None:
            raise ConfigError(f"{t.key(name)}: only with base_url (a manifest gives its own)")
        patterns[name] = _pattern(t.key(name), t.string(name, ""), base_url)
    return MirrorConfig(
        name=t.string("name", _default_name(base_url, manifest), nonempty=True),
        base_url=base_url,
        manifest=manifest,
        **patterns,
    )


def _pattern(key: str, pattern: str, base_url: str) -> str:
    if "{suffix}" not in pattern:
        raise bad(key, "expected a pattern holding {suffix}", pattern)
    unknown = set(_PLACEHOLDER.findall(pattern)) - {"base_url", "suffix"}
    if unknown:
        raise bad(key, "expected only {base_url} and {suffix} placeholders", pattern)
    expanded = pattern.replace("{base_url}", base_url).replace("{suffix}", _SAMPLE_SUFFIX)
    check_url(key, expanded, shown=pattern)
    return pattern


def _watch(t: Table) -> WatchConfig:
    pith = t.strings("pith")
    for i, number in enumerate(pith):
        if not _PITH.match(number):
            raise bad(f"{t.key('pith')}[{i}]", "expected pith:YYYY:SUFFIX or SUFFIX", number)
    return WatchConfig(pith=pith)


def _alerts(t: Table) -> AlertsConfig:
    d = AlertsConfig()
    alerts = AlertsConfig(
        hook=t.path("hook"),
        webhook=t.url("webhook"),
        webhook_secret_file=t.path("webhook_secret_file"),
        stale_after=t.duration("stale_after", d.stale_after),
        unreachable_after=t.duration("unreachable_after", d.unreachable_after),
        hook_timeout=t.duration("hook_timeout", d.hook_timeout),
        resolve_after=t.duration("resolve_after", d.resolve_after, allow_zero=True),
        split_grace=t.duration("split_grace", timedelta(0), allow_zero=True)
        if "split_grace" in t.raw
        else None,
    )
    if alerts.webhook_secret_file is not None and alerts.webhook is None:
        raise ConfigError(f"{t.key('webhook_secret_file')}: set, but alerts.webhook is not")
    return alerts


def _metrics(t: Table) -> MetricsConfig:
    bind = t.string("bind", "")
    m = _BIND.match(bind)
    if bind and (m is None or not 0 < int(m.group(1)) < 65536):
        raise bad(t.key("bind"), 'expected HOST:PORT or ""', bind)
    return MetricsConfig(bind=bind)
