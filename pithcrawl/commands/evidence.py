"""`pithcrawl evidence`: every document behind an alert, written out to be re-checked.

Owns turning one alert into a directory that a third party can check without the
mirrors or the archive: the exact archived bytes of every body the alert's evidence
names (`documents/<sha256>.json`), the keys the archive trusts (`keys/<key_id>.key.json`),
`summary.json`, and a `README.txt` with the `pithcrawl verify` commands and what the
alert claims. It reads the archive read-only and decides nothing: the claim is the
evidence `crawl`, `timeline` and `divergence` stored with the alert, told in words.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from pithcrawl import __version__
from pithcrawl.commands.outdir import OutDir
from pithcrawl.commands.report import archive, row_id, say
from pithcrawl.config import Config
from pithcrawl.errors import EXIT_OK, OperationalError, StoreCorrupt, UsageError
from pithcrawl.keys import TrustedKey
from pithcrawl.location import Where
from pithcrawl.store import Alert, Snapshot, Store
from pithcrawl.text import escaped, json_text
from pithcrawl.timestamps import format_timestamp
from pithcrawl.trust import load_trust, with_learned

HELP = "Write every document behind an alert, with a summary, so anyone can re-check it."
EXAMPLE = "pithcrawl evidence 42 --out alert-42"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: The longest key file name (before `.key.json`): file systems refuse past 255 bytes.
_NAME_MAX = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("alert_id", type=row_id, metavar="ALERT_ID", help="the alert's id")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to write (created)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty DIR (files of the same name are replaced)",
    )


@dataclass(frozen=True, slots=True)
class Ref:
    """A body the evidence names, and where it says the body came from."""

    role: str
    sha256: str
    mirror: str | None
    url: str | None
    fetched_at: str | None
    vantage: str | None = None
    """The vantage it was fetched from, when the evidence says (a `vantage_split`)."""


def body_refs(evidence: Any) -> list[Ref]:
    """Every archived body the evidence names, in the order it names them.

    A key ending in `body_sha256` names one; its role is the key, or `documents[i]`
    for an entry of a list of documents. An object's `mirror`, `url` and `fetched_at`
    describe its own `body_sha256` only (a rollback's previous body, a state mismatch's
    bundle came from other fetches).
    """
    refs: list[Ref] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
            return
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if (
                key.endswith("body_sha256")
                and value is not None
                and not (isinstance(value, str) and _SHA256.fullmatch(value))
            ):
                # pithcrawl writes only sha256s here: anything else is damage, not a
                # document to leave out without a word.
                raise StoreCorrupt(f"the alert's evidence names {where} {value!r}: run fsck")
            if key.endswith("body_sha256") and isinstance(value, str):
                own = key == "body_sha256"
                refs.append(
                    Ref(
                        path if own and path else where,
                        value,
                        _text(node.get("mirror")),
                        _text(node.get("url")) if own else None,
                        _text(node.get("fetched_at")) if own else None,
                        _text(node.get("vantage")) if own else None,
                    )
                )
            else:
                walk(value, where)

    walk(evidence, "")
    return refs


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Document:
    """One body as written: the first ref that named it, every role, the archive's view."""

    ref: Ref
    roles: tuple[str, ...]
    kind: str | None
    trusted: bool | None
    body: bytes

    @property
    def file(self) -> str:
        return f"documents/{self.ref.sha256}.json"

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.ref.sha256,
            "file": self.file,
            "role": self.ref.role,
            "roles": list(self.roles),
            "mirror": self.ref.mirror,
            "url": self.ref.url,
            "fetched_at": self.ref.fetched_at,
            "kind": self.kind,
            "trusted": self.trusted,
        }


@dataclass(frozen=True, slots=True)
class Package:
    alert: Alert
    documents: list[Document]
    keys: list[tuple[str, TrustedKey, str]]  # (file, key, where the archive got it)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {out}: the directory is not empty (use --force to write into it)")
    config, db = archive(args)
    package = anyio.run(_gather, config, db, args.alert_id)
    generated = datetime.now(UTC)
    try:
        _write(out, package, config, generated)
    except OSError as e:
        raise OperationalError(f"--out {out}: cannot write ({e.strerror or e})") from None
    alert = package.alert
    say(
        f"wrote {len(package.documents)} document(s) and {len(package.keys)} key(s)"
        f" for alert {alert.id} ({alert.kind}) to {out}"
    )
    return EXIT_OK


async def _gather(config: Config, db: Where, alert_id: int) -> Package:
    async with await Store.open(db, readonly=True) as store:
        alert = await store.alerts.get(alert_id)
        if alert is None:
            raise UsageError(f"ALERT_ID {alert_id}: no such alert in the archive {db}")
        return await package_of(store, config, alert)


async def package_of(store: Store, config: Config, alert: Alert, *, bodies: bool = True) -> Package:
    """What `evidence` writes of `alert`, read from an open archive (`serve`'s alert
    page shows the same documents and commands; without `bodies`, no body is read, and
    each `Document.body` is empty). Only the snapshots of the bodies the evidence names
    are read, however many the record has."""
    refs = body_refs(alert.evidence)
    snaps: dict[str, list[Snapshot]] = {}
    if alert.suffix is not None and refs:
        for s in await store.snapshots_of_bodies(alert.suffix, [r.sha256 for r in refs]):
            snaps.setdefault(s.body_sha256, []).append(s)
    documents: dict[str, Document] = {}
    for ref in refs:
        seen = documents.get(ref.sha256)
        if seen is None:
            documents[ref.sha256] = await _document(store, alert, ref, snaps, bodies)
        else:
            documents[ref.sha256] = Document(
                seen.ref, (*seen.roles, ref.role), seen.kind, seen.trusted, seen.body
            )
    base = load_trust(config.trust.keys)
    trust = await with_learned(base, store, config)
    origin = "trust.keys" if config.trust.keys else "the registry key shipped with pithcrawl"
    keys: list[tuple[str, TrustedKey, str]] = []
    names: set[str] = set()
    for key_id, key in sorted(trust.items(), key=lambda item: item[0]):
        name = _UNSAFE.sub("_", key_id).lstrip(".") or "key"
        if len(name) > _NAME_MAX:  # a key id is signed text of any length; a file name is not
            tail = hashlib.sha256(key_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
            name = f"{name[: _NAME_MAX - 13]}-{tail}"
        file, n = f"keys/{name}.key.json", 1
        while file in names:
            n += 1
            file = f"keys/{name}-{n}.key.json"
        names.add(file)
        keys.append((file, key, origin if key_id in base else "learned from a key rotation"))
    return Package(alert, list(documents.values()), keys)


async def _document(
    store: Store, alert: Alert, ref: Ref, snaps: dict[str, list[Snapshot]], read: bool = True
) -> Document:
    """A body with what the archive knows of it: the first fetch of it from the mirror
    the evidence names (else from any), filling in what the evidence leaves out."""
    mirror = ref.mirror or next(iter(alert.mirrors), None)
    candidates = snaps.get(ref.sha256, [])
    same = [s for s in candidates if s.mirror == mirror] or candidates
    body = await store.get_blob(ref.sha256) if read else b""
    if not same:
        return Document(ref, (ref.role,), None, None, body)
    snap = same[0]
    full = Ref(
        ref.role,
        ref.sha256,
        ref.mirror or snap.mirror,
        ref.url or snap.url,
        ref.fetched_at or format_timestamp(snap.fetched_at),
        ref.vantage,
    )
    return Document(full, (ref.role,), snap.kind, snap.trusted, body)


def recheck(package: Package, config: Config) -> list[tuple[Document, str]]:
    """One `pithcrawl verify` command per document, run from the evidence directory: as
    of when it was fetched, with the archive's clock skew, as a document of the alert's
    record (a mirror serving another record's document is what some alerts are about)."""
    options = [arg for file, _, _ in package.keys for arg in ("--key", file)]
    if config.trust.clock_skew != Config().trust.clock_skew:
        seconds = config.trust.clock_skew.total_seconds()
        options += ["--clock-skew", f"{int(seconds) if seconds.is_integer() else seconds}s"]
    if package.alert.suffix is not None:
        options += ["--expect", package.alert.suffix]
    commands = []
    for d in package.documents:
        now = ["--now", d.ref.fetched_at] if d.ref.fetched_at else []
        commands.append((d, shlex.join(["pithcrawl", "verify", *options, *now, d.file])))
    return commands


def _write(out: Path, package: Package, config: Config, generated: datetime) -> None:
    """Every file of the package, through `OutDir`: nothing is written through a link
    someone planted in `out`."""
    with OutDir.open(out) as root:
        with root.subdir("documents") as documents:
            for d in package.documents:
                name = d.file.removeprefix("documents/")
                documents.write(name, d.body)
                written = hashlib.sha256(documents.read(name)).hexdigest()
                if written != d.ref.sha256:
                    raise OperationalError(
                        f"{out / d.file}: wrote bytes with sha256 {written}, not {d.ref.sha256}"
                    )
        with root.subdir("keys") as keys:
            for file, key, _ in package.keys:
                text = json.dumps(key.to_json(), indent=2) + "\n"
                keys.write(file.removeprefix("keys/"), text.encode())
        commands = recheck(package, config)
        summary = {
            "alert": package.alert.to_json(),
            "documents": [d.to_json() for d in package.documents],
            "keys": [file for file, _, _ in package.keys],
            "recheck": [c for _, c in commands],
            "generated_at": format_timestamp(generated),
            "pithcrawl_version": __version__,
        }
        root.write("summary.json", (json_text(summary, indent=2) + "\n").encode())
        root.write("README.txt", readme(package, commands, config).encode())


def readme(package: Package, commands: list[tuple[Document, str]], config: Config) -> str:
    """How to re-check the alert, for people."""
    a = package.alert
    status = "open" if a.open else f"closed {format_timestamp(a.closed_at)}" if a.closed_at else ""
    lines = [
        f"Evidence for pithcrawl alert {a.id}: {a.kind} ({a.severity}, {status})",
        f"record:  {a.pith_number or '-'}",
        f"mirrors: {', '.join(a.mirrors) or '-'}",
        f"raised:  {format_timestamp(a.opened_at)}",
        f"summary: {a.summary}",
        "",
        "What the alert claims",
        "",
        *(f"  {line}" for line in claim(a, {d.ref.sha256: d.file for d in package.documents})),
        "",
        "Documents (the exact bytes as fetched; each file is named by its sha256)",
        "",
    ]
    for d in package.documents:
        verdict = {True: "verified", False: "failed verification", None: "not archived as fetched"}
        lines.append(f"  {d.file}")
        lines.append(
            f"    {', '.join(d.roles)}: {d.kind or 'document'} from {d.ref.mirror or '-'}"
            f" fetched {d.ref.fetched_at or '-'}; when archived it {verdict[d.trusted]}"
        )
        lines.append(f"    {d.ref.url or '-'}")
    if not package.documents:
        lines.append("  (none: this alert rests on no document)")
    lines += ["", "Keys (the keys the archive trusts, in the shape of a key file)", ""]
    lines += [f"  {file}: {key.key_id}, {origin}" for file, key, origin in package.keys]
    lines += [
        "",
        "To re-check, from this directory, with pithcrawl (or any verifier of the Pith format);",
        "no network is needed. Each file's sha256 is its name:",
        "",
        "  sha256sum documents/*.json",
        "",
        "Then verify each document as of the time it was fetched (--now):",
        "",
    ]
    for d, command in commands:
        expect = {True: "exit 0 (ok)", False: "exit 1 (FAIL)", None: "see the claim above"}
        lines += [f"  {command}", f"    expect: {expect[d.trusted]}"]
    lines += ["", "summary.json holds the alert object, every document and these commands."]
    # A person reads this file: nothing a mirror sent may act on their terminal.
    return "\n".join(escaped(line) for line in lines) + "\n"


def claim(a: Alert, files: dict[str, str]) -> list[str]:
    """What the alert claims and how its documents show it, from its evidence."""
    ev = a.evidence

    def doc(sha: Any) -> str:
        return files.get(sha, str(sha)) if isinstance(sha, str) else "-"

    def ids(values: Any) -> str:
        return ", ".join(str(v) for v in values) if values else "(none)"

    listed = ev.get("documents")
    cited: list[dict[str, Any]] = listed if isinstance(listed, list) else []
    if a.kind == "mirror_divergence":
        lines = [
            "Two mirrors serve histories of one record that cannot both be true: both",
            "documents verify (each is validly signed), and neither's event ids contain",
            "the other's. The registry's history only grows, so one of them is forked.",
        ]
        only = ev.get("only_in", {})
        for c in cited:
            lines.append(f"Events only in {c.get('mirror')}'s {doc(c.get('body_sha256'))}:")
            lines += [f"  {i}" for i in only.get(c.get("mirror"), [])] or ["  (none)"]
        return lines
    if a.kind == "mirror_stale":
        behind, newer = [*cited, {}, {}][:2]
        return [
            f"{behind.get('mirror')} serves {doc(behind.get('body_sha256'))}, which lacks events",
            f"that {newer.get('mirror')} has served since {ev.get('behind_since')} in",
            f"{doc(newer.get('body_sha256'))}. Both verify; the newer one's event ids contain",
            f"all of the older one's, plus: {ids(ev.get('missing_event_ids'))}.",
        ]
    if a.kind == "vantage_split":
        ahead, behind = [*cited, {}, {}][:2]
        return [
            f"{ev.get('mirror')} served vantage {ahead.get('vantage')} (node"
            f" {ahead.get('node')}) {doc(ahead.get('body_sha256'))} from {ev.get('ahead_since')}",
            f"(and still at {ev.get('ahead_confirmed_at') or 'its last visit'}), while it served"
            f" vantage {behind.get('vantage')} (node {behind.get('node')})",
            f"{doc(behind.get('body_sha256'))} from {ev.get('behind_since')} until at least"
            f" {ev.get('behind_confirmed_at')}: past the grace",
            f"of {ev.get('split_grace_seconds')} s. Both verify; the first holds every event of"
            f" the second, plus: {ids(ev.get('missing_event_ids'))}.",
            "(Each document's fetch time below is when that vantage first got those bytes.)",
        ]
    if a.kind == "equivocation" and "place" in ev:
        place = ev.get("place", {})
        return [
            f"Validly signed events claim the same place in the history ({place.get('kind')}"
            f" {place.get('ref')}): {ids(ev.get('event_ids'))}.",
            "Every document verifies; each holds one of the conflicting events:",
            *(
                f"  {event_id} in {doc(c.get('body_sha256'))} from {c.get('mirror')}"
                for event_id, c in zip(ev.get("event_ids", []), cited, strict=False)
            ),
        ]
    if a.kind == "rollback":
        built = ev.get("built_at", {})
        lines = [
            f"{ev.get('mirror')} served {doc(ev.get('previous_body_sha256'))} before and then",
            f"{doc(ev.get('body_sha256'))}. Both verify; the later one goes back",
            f"({ev.get('cause')}): built_at {built.get('before')} then {built.get('after')}.",
        ]
        for key, what in (("events", "dropped"), ("changed_events", "changed content")):
            events = ev.get(key)
            if isinstance(events, list) and events:
                concerned = ids(e.get("event_id") for e in events if isinstance(e, dict))
                lines.append(f"Events {what}: {concerned}.")
        return lines
    critical = [
        f"  {f.get('code')} at {f.get('path') or '/'}: {f.get('message')}"
        for f in ev.get("findings", [])
        if isinstance(f, dict) and f.get("severity") == "critical"
    ]
    if a.kind == "state_url_mismatch":
        state, bundle = doc(ev.get("state_body_sha256")), doc(ev.get("bundle_body_sha256"))
        diff = ev.get("first_difference")
        if critical:
            return [
                f"{ev.get('mirror')}'s state.json {state} fails verification (the bundle",
                f"{bundle} verifies): verify exits 1 on it and reports:",
                *critical,
            ]
        return [
            f"{ev.get('mirror')}'s state.json {state} is not the `state` inside its bundle",
            f"{bundle}; both verify. "
            + (
                f"First difference at {diff.get('path') or '/'}: {diff.get('what')}" if diff else ""
            ),
            "Compare them with: jq -S .state <bundle> and jq -S . <state.json>.",
        ]
    if "findings" in ev:
        return [
            f"{ev.get('mirror')} served {doc(ev.get('body_sha256'))}, which fails verification",
            "with these keys: verify exits 1 and reports the critical findings:",
            *critical,
        ]
    if a.kind == "mirror_unreachable":
        return [
            f"{ev.get('mirror')} failed for {ev.get('records')} record(s) for longer than the",
            "configured unreachable_after. A failed fetch leaves no document; the examples",
            "are in summary.json.",
        ]
    return [f"See the evidence in summary.json ({a.kind} is not described here)."]
