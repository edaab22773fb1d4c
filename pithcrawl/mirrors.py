"""The mirror set: configured mirrors, mirrors from manifests, mirrors discovered in bundles.

Owns turning each source into `store.Mirror` rows (URL patterns with `{base_url}` and
`{suffix}`), the registry manifest's shape, the names a list may give (`text.mirror_name`),
and the guard on the mirrors nobody configured (listed by a manifest, named by a
bundle): https only, and a public address unless `crawl.allow_private_hosts`.
Configured mirrors are always allowed: the operator chose them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
import structlog

from pithcrawl.addresses import is_public_address
from pithcrawl.canon import MalformedJSON, parse
from pithcrawl.config import Config
from pithcrawl.errors import FetchError
from pithcrawl.fetch import Fetcher
from pithcrawl.store import Mirror, Store
from pithcrawl.text import escaped, mirror_name
from pithcrawl.timestamps import format_timestamp

log = structlog.get_logger("pithcrawl.mirrors")

SUFFIX = "{suffix}"


def expand(pattern: str, base_url: str, suffix: str) -> str:
    # str.replace, not str.format: a URL may hold other braces.
    return pattern.replace("{base_url}", base_url).replace(SUFFIX, suffix)


@dataclass(frozen=True, slots=True)
class Site:
    """A mirror to crawl, with its three URLs for a suffix."""

    name: str
    base_url: str
    bundle_pattern: str
    state_pattern: str
    well_known_pattern: str | None
    origin: str

    def bundle_url(self, suffix: str) -> str:
        return expand(self.bundle_pattern, self.base_url, suffix)

    def state_url(self, suffix: str) -> str:
        return expand(self.state_pattern, self.base_url, suffix)

    def well_known_url(self, suffix: str) -> str | None:
        if self.well_known_pattern is None:
            return None
        return expand(self.well_known_pattern, self.base_url, suffix)

    def row(self, now: datetime) -> Mirror:
        return Mirror(
            self.name,
            self.base_url,
            self.bundle_pattern,
            self.state_pattern,
            self.origin,
            now,
            self.well_known_pattern,
        )

    @classmethod
    def from_row(cls, m: Mirror) -> Site:
        return cls(
            m.name, m.base_url, m.bundle_pattern, m.state_pattern, m.well_known_pattern, m.origin
        )


def configured(config: Config) -> list[Site]:
    return [
        Site(
            m.name,
            m.base_url,
            m.bundle_pattern,
            m.state_pattern,
            m.well_known_pattern,
            "config",
        )
        for m in config.mirrors
        if m.base_url is not None
    ]


def _strings(obj: Mapping[str, Any], *keys: str) -> tuple[str, ...] | None:
    values = tuple(obj.get(k) for k in keys)
    if all(isinstance(v, str) for v in values):
        return values  # type: ignore[return-value] # every item was just checked
    return None


#: The most mirrors one manifest may list (the registry's lists a handful): an unsigned
#: document must not make every record be crawled from thousands of places.
MANIFEST_MAX = 256


def from_manifest(doc: Any, *, prefix: str = "") -> list[Site]:
    """The mirrors a `pith_mirror_manifest` lists; entries without usable patterns, or
    whose name or URLs are unfit to show (`text.mirror_name`: a name names the mirror in
    every alert, hook and table), are skipped, each with a warning (a manifest is
    unsigned: it can add places to look, never trust, and never text to print)."""
    if not isinstance(doc, dict) or doc.get("manifest_type") != "pith_mirror_manifest":
        raise ValueError("not a pith_mirror_manifest")
    entries = doc.get("mirrors") or []
    if not isinstance(entries, list):
        raise ValueError(f"its mirrors are a {type(entries).__name__}, not a list")
    if len(entries) > MANIFEST_MAX:
        raise ValueError(f"it lists {len(entries)} mirrors (at most {MANIFEST_MAX} are read)")
    sites: list[Site] = []
    per_host: dict[str, int] = {}
    for entry in entries:
        fields = (
            _strings(entry, "name", "base_url", "bundle_pattern", "state_pattern")
            if isinstance(entry, dict)
            else None
        )
        if fields is None:
            continue
        listed, base, bundle, state = fields
        if SUFFIX not in bundle or SUFFIX not in state or not _http(base):
            continue
        refused = _refused(listed, (base, bundle, state), sites, per_host)
        if refused is not None:
            log.warning("manifest_entry_refused", name=escaped(listed[:100]), reason=refused)
            continue
        # A name unfit to show (a mirror's name is in every alert, hook and table) gives
        # way to its host's.
        name = mirror_name(listed) or mirror_name(urlsplit(base).hostname or "") or ""
        if name and name != listed:
            log.warning(
                "manifest_entry_renamed",
                name=escaped(listed[:100]),
                to=name,
                reason="a name of letters, digits, spaces and . _ - : @ + ( ) [ ], up to 64",
            )
        if not name or any(s.name == prefix + name for s in sites):
            log.warning(
                "manifest_entry_refused",
                name=escaped(listed[:100]),
                reason="no name fit to show, nor a host name one (or it is taken)",
            )
            continue
        host = _host_key(base)
        per_host[host] = per_host.get(host, 0) + 1
        well_known = entry.get("well_known_pattern")
        if not (isinstance(well_known, str) and SUFFIX in well_known and _url_text(well_known)):
            well_known = None
        sites.append(Site(prefix + name, base.rstrip("/"), bundle, state, well_known, "manifest"))
    return sites


#: The most entries of one manifest that may name one host: a mirror is a place; 256
#: names for one server would make every alert about it 256 alerts.
MANIFEST_PER_HOST = 2


def _host_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}:{parts.port or ''}"


def _refused(
    name: str, urls: tuple[str, ...], taken: list[Site], per_host: dict[str, int]
) -> str | None:
    """Why a manifest entry (its name as listed, its base URL and patterns) is not read,
    or None."""
    if not all(map(_url_text, urls)):
        return "URLs of printable ASCII are expected"
    if any(s.name.rpartition("/")[2] == name for s in taken):
        return "its name is listed already (the first entry of a name is read)"
    if per_host.get(_host_key(urls[0]), 0) >= MANIFEST_PER_HOST:
        return f"more than {MANIFEST_PER_HOST} entries name its host"
    return None


def from_hints(bundle: Mapping[str, Any], suffix: str) -> list[Site]:
    """Mirrors a verified bundle names in `mirror_hints`, as patterns for any suffix."""
    sites = []
    for hint in bundle.get("mirror_hints") or []:
        fields = (
            _strings(hint, "base_url", "bundle_url", "state_url")
            if isinstance(hint, dict)
            else None
        )
        if fields is None:
            continue
        base, bundle_url, state_url = fields
        if suffix not in bundle_url or suffix not in state_url:
            continue
        well_known = hint.get("well_known_bundle_url")
        well_known_pattern = (
            well_known.replace(suffix, SUFFIX)
            if isinstance(well_known, str) and suffix in well_known
            else None
        )
        if not all(map(_url_text, (base, bundle_url, state_url))):
            continue
        host = urlsplit(base).hostname or base
        label = mirror_name(hint.get("name")) or host
        name = mirror_name(f"{label} ({host})") or mirror_name(host)
        if name is None:  # a host no mirror name can hold: not a place to crawl
            continue
        if well_known_pattern is not None and not _url_text(well_known_pattern):
            well_known_pattern = None
        sites.append(
            Site(
                name,
                base.rstrip("/"),
                bundle_url.replace(suffix, SUFFIX),
                state_url.replace(suffix, SUFFIX),
                well_known_pattern,
                "discovered",
            )
        )
    return sites


def _url_text(url: str) -> bool:
    """A URL (or pattern) as a mirror list may give it: printable ASCII, bounded."""
    return url.isascii() and url.isprintable() and len(url) <= 2048


def _http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


async def public_url(url: str) -> bool:
    """Whether a discovered mirror may send us to `url`: https, to public addresses only."""
    site = Site("", url, url, url, None, "discovered")
    return await discoverable(site, allow_private=False) is None


async def discoverable(site: Site, *, allow_private: bool) -> str | None:
    """Why a mirror nobody configured may not be crawled (not https, or a name that
    resolves to an address that is not public), or None when it may."""
    urls = [site.base_url, site.bundle_url("A" * 26), site.state_url("A" * 26)]
    well_known = site.well_known_url("A" * 26)
    if well_known is not None:  # the fallback address is fetched too
        urls.append(well_known)
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "https" and not allow_private:
            return f"{url} is not https"
        if allow_private:
            continue
        host = parts.hostname or ""
        try:
            infos = await anyio.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            # No answer is no verdict: the mirror stays, and fails when fetched (its every
            # connection is made to public addresses only), as a mirror that is down.
            # Dropping it would make a mirror that went dark at DNS vanish with its
            # history instead of becoming `mirror_unreachable`.
            continue
        addresses = {str(info[4][0]) for info in infos}
        private = sorted(a for a in addresses if not is_public_address(a))
        if private:
            return f"{host} resolves to a non-public address ({', '.join(private)})"
    return None


async def fetch_manifest(fetcher: Fetcher, url: str, name: str) -> list[Site]:
    """The mirrors a manifest lists now; an unreadable manifest is an error to log."""
    try:
        result = await fetcher.get(url)
    except FetchError as e:
        raise ValueError(str(e)) from None
    if result.status != 200:
        raise ValueError(f"HTTP {result.status} from {url}")
    try:
        doc = parse(result.body)
    except MalformedJSON as e:
        raise ValueError(f"{url}: {e}") from None
    return from_manifest(doc, prefix=f"{name}/")


def unique(sites: Iterable[Site]) -> list[Site]:
    """One site per bundle URL pattern (the manifest and a base URL often name the same
    place) and per name; the first listed wins, so configured mirrors come first."""
    seen_patterns: set[str] = set()
    seen_names: set[str] = set()
    out = []
    for site in sites:
        pattern = expand(site.bundle_pattern, site.base_url, SUFFIX)
        if pattern in seen_patterns or site.name in seen_names:
            continue
        seen_patterns.add(pattern)
        seen_names.add(site.name)
        out.append(site)
    return out


async def resolve(
    config: Config, store: Store, fetcher: Fetcher, now: datetime
) -> tuple[list[Site], list[str]]:
    """Every mirror to crawl now (configured, from manifests (refreshed), discovered), and
    the names of the manifests that could not be read now (their last listing stands).

    Each manifest's last read and last failure are kept in the archive (`manifest_reads`)
    for `status` to show."""
    sites = configured(config)
    manifest_sites: list[Site] = []
    unread: list[str] = []  # manifests not read now: their last listing stands
    for m in config.mirrors:
        if m.manifest is None:
            continue
        read = await manifest_read(store, m.name)
        try:
            listed = await fetch_manifest(fetcher, m.manifest, m.name)
        except ValueError as e:
            log.warning("manifest_unreadable", manifest=m.manifest, error=str(e))
            unread.append(m.name)
            read.update(url=m.manifest, last_failure_at=format_timestamp(now), last_error=str(e))
            await store.set_setting(MANIFEST_SETTING + m.name, json.dumps(read))
            continue
        read.update(
            url=m.manifest,
            last_success_at=format_timestamp(now),
            last_error=None,
            listed=len(listed),
        )
        await store.set_setting(MANIFEST_SETTING + m.name, json.dumps(read))
        # A mirror it still lists keeps its history, even while the guard refuses it.
        names = {site.name for site in listed}
        listed = await _allowed(listed, config)
        manifest_sites += listed  # exactly what it lists now: a mirror it dropped is gone
        for site in listed:
            await store.watchlist.upsert_mirror(site.row(now))
        for row in await store.watchlist.mirrors():
            dropped = Site.from_row(row)
            if (
                dropped.origin == "manifest"
                and dropped.name.startswith(f"{m.name}/")
                and dropped.name not in names
            ):
                await store.watchlist.remove_mirror(dropped.name)
    known = [Site.from_row(row) for row in await store.watchlist.mirrors()]
    manifest_sites += [
        s
        for s in known
        if s.origin == "manifest" and any(s.name.startswith(f"{name}/") for name in unread)
    ]
    discovered = []
    if config.crawl.discover:
        # Checked again each time: a name may now resolve elsewhere, and a mirror found
        # while private hosts were allowed is dropped once they are not.
        discovered = await _allowed([s for s in known if s.origin == "discovered"], config)
    resolved = unique([*sites, *manifest_sites, *discovered])
    await store.set_setting(CRAWLED_SETTING, json.dumps(sorted(s.name for s in resolved)))
    return resolved, unread


async def _allowed(sites: list[Site], config: Config) -> list[Site]:
    """The mirrors nobody configured (listed by a manifest, named by a bundle) that pass
    the guard (`discoverable`): an unsigned list must not point pithcrawl at loopback, a
    private network or a cloud's metadata address."""
    allowed = []
    for site in sites:
        refused = await discoverable(site, allow_private=config.crawl.allow_private_hosts)
        if refused is None:
            allowed.append(site)
        else:
            log.info("mirror_skipped", mirror=site.name, origin=site.origin, reason=refused)
    return allowed


#: The names of the mirrors the last pass crawled (JSON list), for `status`.
CRAWLED_SETTING = "mirrors:crawled"


async def last_crawled(store: Store) -> set[str] | None:
    """The mirrors the last pass crawled, or None if no pass has said."""
    text = await store.setting(CRAWLED_SETTING)
    try:
        names = json.loads(text) if text else None
    except ValueError:
        return None
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else None


#: Settings named this plus a manifest entry's name hold its last read (JSON: `url`,
#: `last_success_at`, `last_failure_at`, `last_error`, `listed`).
MANIFEST_SETTING = "manifest:"


async def manifest_read(store: Store, name: str) -> dict[str, Any]:
    """What the archive knows of the last reads of manifest entry `name` ({} if none)."""
    text = await store.setting(MANIFEST_SETTING + name)
    try:
        read = json.loads(text) if text else {}
    except ValueError:
        return {}
    return read if isinstance(read, dict) else {}
