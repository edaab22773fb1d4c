"""`pithcrawl verify`: the offline check of bundle and state documents.

Reads files, stdin or URLs (fetched once, with a timeout and a size cap), verifies
each against the trust set, prints one line per document (or one JSON document) and
exits 0 (all ok), 1 (a critical finding; a document over `crawl.max_bytes` is
`malformed_json`), 3 (something could not be read).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from pithcrawl.commands.report import print_json, say
from pithcrawl.config import Config, load_config
from pithcrawl.errors import (
    EXIT_OK,
    EXIT_OPERATIONAL,
    EXIT_SECURITY,
    FetchError,
    TooLarge,
    UsageError,
)
from pithcrawl.findings import finding
from pithcrawl.pith import parse_reference
from pithcrawl.timestamps import format_timestamp, parse_duration, parse_timestamp
from pithcrawl.trust import load_trust
from pithcrawl.verify import Report, verify

HELP = "Check bundle or state documents offline: every hash, signature and time rule."
EXAMPLE = "pithcrawl verify 2SZ3GMWFCMMCUPZJQTONOWSJZ2.bundle.json --json"

_OTHER_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_SUFFIX = re.compile(r"/pith/([A-Z2-7]{26})/(?:bundle|state)\.json(?:$|\?)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="file, '-' for stdin, or URL")
    p.add_argument(
        "--key",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="trusted key file (repeatable); replaces the shipped registry key",
    )
    p.add_argument("--now", metavar="TIME", help="verify as of this RFC 3339 UTC time")
    p.add_argument(
        "--expect",
        metavar="PITH",
        help="every document must be of this record (number, suffix or bundle URL)",
    )
    p.add_argument(
        "--clock-skew",
        metavar="DURATION",
        help="timestamps may be this far ahead of now (default: trust.clock_skew)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


@dataclass(frozen=True, slots=True)
class _Read:
    source: str
    data: bytes | None
    error: str | None = None
    expected_suffix: str | None = None
    too_large: str | None = None
    """Why the document was not read whole: too large is `malformed_json` (contract.md),
    a finding like any other, not a failure to read."""


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else Config()
    now = datetime.now(UTC)
    if args.now is not None:
        stamp = parse_timestamp(args.now)
        if stamp is None:
            raise UsageError(
                f"--now: {args.now!r} is not an RFC 3339 UTC time like 2026-06-01T00:00:00Z"
            )
        now = stamp.at
    skew = config.trust.clock_skew
    if args.clock_skew is not None:
        try:
            skew = parse_duration(args.clock_skew)
        except ValueError as e:
            raise UsageError(f"--clock-skew: {e}") from None
    try:
        now + skew  # the verifier adds them: the sum must be a time
    except OverflowError:
        raise UsageError(
            f"--now {format_timestamp(now)} plus the clock skew ({skew}) is past the last"
            " time there is (9999-12-31)"
        ) from None
    expect = None
    if args.expect is not None:
        try:
            expect = parse_reference(args.expect)
        except ValueError as e:
            raise UsageError(f"--expect: {e}") from None
    for source in args.sources:
        if _OTHER_URL.match(source) and not _is_url(source) and not Path(source).exists():
            raise UsageError(f"SOURCE {source!r}: only http(s) URLs, files and - are read")
    trust = load_trust(args.key or config.trust.keys)
    reads = _read_all(args.sources, config)
    results: list[dict[str, Any]] = []
    code = EXIT_OK
    for read in reads:
        if read.too_large is not None:
            report = Report("unknown", None, (finding("malformed_json", "", read.too_large),))
            results.append({"source": read.source, "kind": report.kind, **report.to_json()})
            code = EXIT_SECURITY
            if not args.json:
                _print_report(read.source, report, args.verbose)
            continue
        if read.data is None:
            results.append({"source": read.source, "ok": False, "error": read.error})
            code = max(code, EXIT_OPERATIONAL) if code != EXIT_SECURITY else code
            if not args.json:
                say(f"ERROR {read.source}: {read.error}")
            continue
        report = verify(
            read.data,
            trust,
            now=now,
            clock_skew=skew,
            expected_suffix=expect or read.expected_suffix,
        )
        results.append({"source": read.source, "kind": report.kind, **report.to_json()})
        if not report.ok:
            code = EXIT_SECURITY
        if not args.json:
            _print_report(read.source, report, args.verbose)
    if args.json:
        print_json({"results": results}, indent=2)
    return code


def _print_report(source: str, report: Report, verbose: int) -> None:
    number = report.pith_number or "-"
    codes = sorted({f.code for f in report.findings})
    doc = report.document if isinstance(report.document, dict) else None
    if report.ok:
        tail = f" (warnings: {', '.join(codes)})" if codes else ""
        if report.kind == "state":
            # A state is not signed: what was checked is its shape, hash and record.
            tail += " (a state.json: shape and state_sha256 checked; states are unsigned)"
        say(f"ok    {number} {source}{tail}")
    elif doc is not None and "bundle_type" not in doc and "state_type" not in doc:
        say(f"FAIL  - {source}: not a Pith bundle or state{_what_else(doc)}")
        if not verbose:
            return
    else:
        # The number the document claims to be, as a reader would look it up; the one its
        # record hashes to, when that differs (a tampered record).
        claimed = doc.get("pith_number") if doc is not None else None
        if isinstance(claimed, str) and claimed != number:
            number = f"{claimed} (its record hashes to {number})"
        say(f"FAIL  {number} {source}: {', '.join(codes)}")
    if verbose or not report.ok:
        for f in report.findings if verbose else report.findings[:5]:
            say(f"      {f.severity} {f.code} {f.path or '/'}: {f.message}")
        if not verbose and len(report.findings) > 5:
            say(f"      … {len(report.findings) - 5} more (use -v)")


def _what_else(doc: dict[str, Any]) -> str:
    """What a JSON object that is no Pith document looks like, if pithcrawl knows it."""
    if "key_id" in doc and ("public_key_b64" in doc or "public_key_hex" in doc):
        return " (a key file: give it to --key FILE)"
    if "mirrors" in doc:
        return " (a mirror manifest)"
    return " (neither bundle_type nor state_type; -v lists what a bundle lacks)"


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _read_all(sources: list[str], config: Config) -> list[_Read]:
    fetched = {}
    urls = [s for s in sources if _is_url(s)]
    if urls:
        fetched = anyio.run(_fetch_all, urls, config)
    return [fetched[s] if _is_url(s) else _read_local(s, config.crawl.max_bytes) for s in sources]


async def _fetch_all(urls: list[str], config: Config) -> dict[str, _Read]:
    out: dict[str, _Read] = {}
    from pithcrawl.fetch import user_agent
    from pithcrawl.fetch.client import HttpFetcher, check_bindable

    if config.crawl.source_address is not None:
        check_bindable(config.crawl.source_address)

    async with HttpFetcher(
        user_agent=user_agent(config.crawl.contact),
        timeout=config.crawl.timeout.total_seconds(),
        max_bytes=config.crawl.max_bytes,
        source_address=config.crawl.source_address,
    ) as fetcher:
        for url in urls:
            try:
                result = await fetcher.get(url)
            except TooLarge as e:
                if e.status != 200:  # an error page, however large, is no document
                    out[url] = _Read(url, None, f"HTTP {e.status}")
                else:
                    out[url] = _Read(url, None, too_large=f"too large: {_without(url, e)}")
                continue
            except FetchError as e:
                out[url] = _Read(url, None, _without(url, e))
                continue
            if result.status != 200:
                out[url] = _Read(url, None, f"HTTP {result.status}")
                continue
            m = _URL_SUFFIX.search(result.url)
            out[url] = _Read(url, result.body, expected_suffix=m.group(1) if m else None)
    return out


def _without(url: str, error: Exception) -> str:
    """The error's message without the URL it starts with (the line names it already)."""
    return str(error).removeprefix(f"{url}: ")


def _read_local(source: str, cap: int) -> _Read:
    try:
        if source == "-":
            source, data = "<stdin>", sys.stdin.buffer.read(cap + 1)
        else:
            with Path(source).open("rb") as f:
                data = f.read(cap + 1)
    except OSError as e:
        return _Read(source, None, f"cannot read: {e.strerror or e}")
    if len(data) > cap:
        return _Read(source, None, too_large=f"too large: over crawl.max_bytes ({cap} bytes)")
    return _Read(source, data)
