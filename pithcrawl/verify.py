"""The verifier: whether a Pith document can be trusted, as a report of findings.

Owns every per-document rule of pith-format.md: hashes, Pith Number binding, key and
signature checks against a configured trust set, the merge comparison, the timestamp
rules §5 (1–6) and equivocation inside one bundle. Pure: bytes and `now` in, a
`Report` out; hostile input gives findings, never an exception. It does not compare a
document with earlier ones (`timeline`) or with other mirrors (`divergence`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pithcrawl import schema
from pithcrawl.canon import H, MalformedJSON, Piece, canon, parse, parse_compact, sha256_hex
from pithcrawl.findings import Finding, finding, is_critical, pointer
from pithcrawl.keys import TrustedKey, TrustSet, key_problems, verify_signature
from pithcrawl.merge import (
    Equivocation,
    derive,
    entry,
    equivocation_groups,
    merge,
    state_sha256,
)
from pithcrawl.pith import is_suffix_of, pith_number, short_aliases
from pithcrawl.timestamps import Timestamp, not_after, parse_timestamp

DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
#: Codes that make a single event invalid (not applied by the merge).
EVENT_INVALIDATING = frozenset(
    {
        "event_hash_mismatch",
        "event_signature_invalid",
        "event_subject_mismatch",
        "untrusted_key",
        "key_mismatch",
        "key_expired",
    }
)


class EventInfo(NamedTuple):
    """What the verifier learnt about one event of a bundle.

    A named tuple rather than a frozen dataclass: one is made per event verified, and a
    frozen dataclass's __init__ (one object.__setattr__ per field) costs seven times more.
    """

    # The event's place in the bundle. It hides tuple.index, which nobody calls on these.
    index: int  # type: ignore[assignment]
    event_id: str
    event_type: str
    content_sha256: str
    key_id: str
    prev_event: str | None
    supersedes: tuple[str, ...]
    valid: bool


@dataclass(frozen=True, slots=True)
class Report:
    """The verdict on one document: findings, and what later stages need from it."""

    kind: str  # "bundle", "state" or "unknown"
    pith_number: str | None
    findings: tuple[Finding, ...]
    document: Any = None
    bundle_sha256: str | None = None
    built_at: str | None = None
    events: tuple[EventInfo, ...] = ()
    state: dict[str, Any] | None = None
    equivocations: tuple[Equivocation, ...] = ()

    @property
    def ok(self) -> bool:
        """No critical finding: the document may be trusted."""
        return not is_critical(self.findings)

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        return {
            "pith_number": self.pith_number,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
        }


def verify(
    data: bytes,
    trust: TrustSet,
    *,
    now: datetime,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    expected_suffix: str | None = None,
) -> Report:
    """Verify a bundle or a state document, whichever `data` is."""
    try:
        doc = parse(data)
    except MalformedJSON as e:
        return Report("unknown", None, (finding("malformed_json", "", str(e)),))
    if isinstance(doc, dict) and "state_type" in doc and "bundle_type" not in doc:
        return verify_state_document(doc, expected_suffix=expected_suffix)
    return verify_bundle(
        data, trust, now=now, clock_skew=clock_skew, expected_suffix=expected_suffix
    )


def verify_bundle(
    data: bytes,
    trust: TrustSet,
    *,
    now: datetime,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    expected_suffix: str | None = None,
) -> Report:
    """Verify the raw bytes of a bundle."""
    fast = parse_compact(data)
    if fast is not None:
        report = clean_bundle_report(fast, trust, now + clock_skew, expected_suffix)
        if report is not None:
            return report
        # Anything that may be wrong is looked at by the complete check, on the exact,
        # spec-defined reading of the bytes; the fast reading is let go first, so two
        # trees of a large body never coexist.
        del fast
    try:
        doc = parse(data)
    except MalformedJSON as e:
        return Report("bundle", None, (finding("malformed_json", "", str(e)),))
    return verify_bundle_document(
        doc, trust, now=now, clock_skew=clock_skew, expected_suffix=expected_suffix
    )


def verify_bundle_document(
    doc: Any,
    trust: TrustSet,
    *,
    now: datetime,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    expected_suffix: str | None = None,
) -> Report:
    """Verify a parsed bundle (from `canon.parse`: floats must be `JsonFloat`)."""
    problems = list(_bundle_shape(doc))
    if problems:
        claimed = doc.get("pith_number") if isinstance(doc, dict) else None
        return Report(
            "bundle",
            claimed if isinstance(claimed, str) else None,
            tuple(finding("schema_invalid", p, m) for p, m in problems),
            document=doc,
        )
    return _BundleCheck(doc, trust, now + clock_skew, expected_suffix).run()


def verify_state(data: bytes, *, expected_suffix: str | None = None) -> Report:
    """Verify a `state.json` on its own: shape, `state_sha256`, the number's form."""
    try:
        doc = parse(data)
    except MalformedJSON as e:
        return Report("state", None, (finding("malformed_json", "", str(e)),))
    return verify_state_document(doc, expected_suffix=expected_suffix)


def verify_state_document(doc: Any, *, expected_suffix: str | None = None) -> Report:
    problems = list(schema.check(doc, schema.STATE))
    if problems:
        return Report(
            "state", None, tuple(finding("schema_invalid", p, m) for p, m in problems), doc
        )
    findings: list[Finding] = []
    if state_sha256(doc) != doc["state_sha256"]:
        findings.append(
            finding(
                "state_hash_mismatch",
                "/state_sha256",
                f"state_sha256 is {doc['state_sha256']!r}, the state hashes to "
                f"{state_sha256(doc)!r}",
            )
        )
    number = doc["pith_number"]
    if expected_suffix is not None and number.rpartition(":")[2] != expected_suffix:
        findings.append(
            finding(
                "pith_number_mismatch",
                "/pith_number",
                f"served for {expected_suffix}, but the state is of {number}",
            )
        )
    return Report("state", number, tuple(findings), doc, state=doc)


def _bundle_shape(doc: Any) -> Iterator[tuple[str, str]]:
    yield from schema.check(doc, schema.BUNDLE)
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        return
    created = [
        i
        for i, e in enumerate(doc["events"])
        if isinstance(e, dict) and e.get("event_type") == "record_created"
    ]
    if not created:
        yield "/events", "the bundle has no record_created event"
    for i in created:
        payload = doc["events"][i].get("payload")
        yield from schema.check(payload, schema.RECORD_CREATED_PAYLOAD, "events", i, "payload")
    for i, key in enumerate(doc.get("public_keys") or []):
        if isinstance(key, dict) and key.get("key_id") is not None:
            for fld, msg in key_problems(key):
                if fld in ("", "algorithm"):
                    yield pointer("public_keys", i, fld), msg


_UNSIGNED_EVENT_FIELDS = ("signature", "content_sha256", "event_id")


@dataclass(slots=True)
class Parts:
    """Canonical bytes of a bundle's large parts, each serialised once.

    The canonical JSON of an object is assembled from the canonical JSON of its values,
    so every hash the format defines (record, event content, state, bundle) and the
    recomputed state are built around these pre-serialised pieces (`canon.Piece`),
    exactly, without serialising an event payload or the state's `current` twice.
    """

    record: Piece
    payloads: list[Piece]
    current: Piece

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Parts:
        return cls(
            Piece(doc["canonical_record"]),
            [Piece(e["payload"]) for e in doc["events"]],
            Piece(doc["state"]["current"]),
        )

    def _event(self, i: int, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "payload": self.payloads[i]}

    def event_content(self, i: int, event: dict[str, Any]) -> bytes:
        # A copy less three keys, not a comprehension: dict.copy clones the table whole.
        content = event.copy()
        for name in _UNSIGNED_EVENT_FIELDS:
            del content[name]  # all three are required: the bundle fits schema.EVENT
        content["payload"] = self.payloads[i]
        return canon(content)

    def entry(self, i: int, event: Any) -> dict[str, Any]:
        made = entry(event)
        made["payload"] = self.payloads[i]
        return made

    def state_without_sha256(self, state: dict[str, Any]) -> bytes:
        copy = state.copy()
        del copy["state_sha256"]  # required by schema.STATE
        copy["current"] = self.current
        return canon(copy)

    def bundle(self, doc: dict[str, Any]) -> bytes:
        """canon(bundle without bundle_signature)."""
        top = doc.copy()
        del top["bundle_signature"]  # required by schema.BUNDLE
        top["canonical_record"] = self.record
        top["events"] = [self._event(i, e) for i, e in enumerate(doc["events"])]
        top["state"] = doc["state"] | {"current": self.current}
        return canon(top)


@dataclass(slots=True)
class _BundleCheck:
    """One pass of every rule over one well-shaped bundle."""

    doc: dict[str, Any]
    trust: TrustSet
    latest: datetime  # now + clock skew: nothing may be signed or built after it
    expected_suffix: str | None
    findings: list[Finding] = field(default_factory=list)
    parts: Parts = field(init=False)
    times: dict[str, Timestamp | None] = field(default_factory=dict)
    rotates: dict[str, Timestamp] = field(default_factory=dict)

    def add(self, code: str, path: str, message: str) -> None:
        self.findings.append(finding(code, path, message))

    def run(self) -> Report:
        doc = self.doc
        parts = self.parts = Parts.of(doc)
        self._timestamps()
        self._keys()
        canonical = sha256_hex(parts.record.data)
        number = self._pith_number(canonical)
        infos = [self._event(i, e, number) for i, e in enumerate(doc["events"])]
        self._record_created(canonical)
        bundle_sha = self._bundle_signature()
        valid = [info.valid for info in infos]
        groups = equivocation_groups(doc["events"], valid)
        for g in groups:
            self.add(
                "equivocation",
                pointer("events", g.indexes[-1]),
                f"events {', '.join(g.event_ids)} all claim {g.kind} {g.ref}",
            )
        reasons = {
            f_index: codes for f_index, codes in self._event_reasons().items() if not valid[f_index]
        }
        state = self._state(valid, reasons, groups, number)
        return Report(
            "bundle",
            number,
            tuple(self.findings),
            document=doc,
            bundle_sha256=bundle_sha,
            built_at=doc["built_at"],
            events=tuple(infos),
            state=state,
            equivocations=tuple(groups),
        )

    # -- keys and signatures ------------------------------------------------------

    def _keys(self) -> None:
        for i, key in enumerate(self.doc["public_keys"]):
            for fld, msg in key_problems(key):
                self.add("key_mismatch", pointer("public_keys", i, fld), msg)
            trusted = self.trust.get(key["key_id"])
            if trusted is None:
                continue
            if not trusted.published_as(key.get("public_key_hex"), key.get("public_key_b64")):
                self.add(
                    "key_mismatch",
                    pointer("public_keys", i),
                    f"key {key['key_id']!r} is published with other bytes than the trusted key "
                    f"(fingerprint {trusted.fingerprint_hex})",
                )
                continue
            announced = self.times.get(pointer("public_keys", i, "rotates_at"))
            if announced is not None:
                self.rotates[trusted.key_id] = announced
        _add_configured_rotations(self.rotates, self.trust)

    def _signed(self, path: str, sig: dict[str, Any], digest: str, code: str) -> bool:
        """Check one signature block over `digest`; False when it does not hold."""
        key = self._signing_key(path, sig["key_id"], sig["public_key_fingerprint"])
        if key is None:
            return False
        ok = True
        signed_at = self.times.get(path)
        rotates = self.rotates.get(key.key_id)
        if signed_at is not None and rotates is not None and signed_at.at > rotates.at:
            self.add(
                "key_expired",
                path + "/signed_at",
                f"signed at {signed_at.text} by key {key.key_id!r}, which rotated at "
                f"{rotates.text}",
            )
            ok = False
        if not verify_signature(key.raw, digest, sig["signature_b64"]):
            self.add(
                code, path + "/signature_b64", f"not a signature by {key.key_id!r} of {digest}"
            )
            ok = False
        return ok

    def _signing_key(self, path: str, key_id: str, fingerprint: str) -> TrustedKey | None:
        key = self.trust.get(key_id)
        if key is None:
            self.add(
                "untrusted_key",
                path + "/key_id",
                f"signed by key {key_id!r}, which is not trusted (trusted: "
                f"{', '.join(sorted(self.trust)) or 'none'})",
            )
            return None
        if fingerprint != key.fingerprint_hex:
            self.add(
                "key_mismatch",
                path + "/public_key_fingerprint",
                f"fingerprint {fingerprint!r} is not that of trusted key {key_id!r} "
                f"({key.fingerprint_hex})",
            )
            return None
        return key

    # -- the record and its number --------------------------------------------------

    def _pith_number(self, canonical: str) -> str:
        doc = self.doc
        if doc["canonical_sha256"] != canonical:
            self.add(
                "canonical_hash_mismatch",
                "/canonical_sha256",
                f"canonical_sha256 is {doc['canonical_sha256']!r}, the canonical record "
                f"hashes to {canonical!r}",
            )
        submitted = doc["canonical_record"]["metadata"]["submitted_at"]
        number = pith_number(canonical, submitted)
        suffix = number.rpartition(":")[2]
        if doc["pith_number"] != number:
            self.add(
                "pith_number_mismatch",
                "/pith_number",
                f"expected {number} from the canonical record, found {doc['pith_number']!r}",
            )
        if self.expected_suffix is not None and suffix != self.expected_suffix:
            self.add(
                "pith_number_mismatch",
                "/pith_number",
                f"served at the address of {self.expected_suffix}, but the bundle is {number}",
            )
        short = f"pith:{suffix[:8]}"
        if doc.get("short_pith_number", short) != short:
            self.add(
                "pith_number_mismatch",
                "/short_pith_number",
                f"expected {short}, found {doc['short_pith_number']!r}",
            )
        aliases = short_aliases(suffix)
        for i, alias in enumerate(doc["source_aliases"]):
            want = aliases.get(alias["alias_kind"])
            if want is not None and alias["alias_value"] != want:
                self.add(
                    "pith_number_mismatch",
                    pointer("source_aliases", i, "alias_value"),
                    f"{alias['alias_kind']} should be {want!r}, found {alias['alias_value']!r}",
                )
        return number

    def _record_created(self, canonical: str) -> None:
        for i, event in enumerate(self.doc["events"]):
            if event["event_type"] != "record_created":
                continue
            base = f"/events/{i}/payload"
            payload = event["payload"]
            if H(payload["canonical_record"]) != canonical:
                self.add(
                    "canonical_hash_mismatch",
                    base + "/canonical_record",
                    "the record_created event carries another canonical record than the bundle",
                )
            for path, claimed in (
                (base + "/canonical_sha256", payload["canonical_sha256"]),
                (base + "/receipt/canonical_sha256", payload["receipt"]["canonical_sha256"]),
            ):
                if claimed != canonical:
                    self.add(
                        "canonical_hash_mismatch",
                        path,
                        f"expected {canonical}, found {claimed!r}",
                    )
            self._signed(
                base + "/receipt", payload["receipt"], canonical, "receipt_signature_invalid"
            )

    # -- events -------------------------------------------------------------------------

    def _event(self, i: int, event: dict[str, Any], number: str) -> EventInfo:
        base = f"/events/{i}"
        findings = self.findings
        before = len(findings)
        content = sha256_hex(self.parts.event_content(i, event))
        if event["content_sha256"] != content:
            self.add(
                "event_hash_mismatch",
                base + "/content_sha256",
                f"content_sha256 is {event['content_sha256']!r}, the event hashes to {content!r}",
            )
        if event["event_id"] != "sha256:" + content:
            self.add(
                "event_hash_mismatch",
                base + "/event_id",
                f"expected sha256:{content}, found {event['event_id']!r}",
            )
        if event["subject_pith_number"] != number:
            self.add(
                "event_subject_mismatch",
                base + "/subject_pith_number",
                f"the event is about {event['subject_pith_number']!r}, the bundle is {number}",
            )
        signer, sig = event["signer"], event["signature"]
        for fld in ("key_id", "public_key_fingerprint"):
            if signer[fld] != sig[fld]:
                self.add(
                    "key_mismatch",
                    f"{base}/signer/{fld}",
                    f"the signer names {signer[fld]!r}, the signature {sig[fld]!r}",
                )
        self._signed(base + "/signature", sig, content, "event_signature_invalid")
        valid = len(findings) == before or not any(
            f.code in EVENT_INVALIDATING for f in findings[before:]
        )
        return EventInfo(
            i,
            event["event_id"],
            event["event_type"],
            content,
            sig["key_id"],
            event["prev_event"],
            tuple(event["supersedes"]),
            valid,
        )

    def _event_reasons(self) -> dict[int, list[str]]:
        reasons: dict[int, list[str]] = {}
        for f in self.findings:
            if f.code in EVENT_INVALIDATING and f.path.startswith("/events/"):
                index = int(f.path.split("/")[2])
                reasons.setdefault(index, []).append(f.code)
        return reasons

    # -- the bundle and its state -------------------------------------------------------

    def _bundle_signature(self) -> str:
        doc = self.doc
        computed = sha256_hex(self.parts.bundle(doc))
        sig = doc["bundle_signature"]
        if sig["bundle_sha256"] != computed:
            self.add(
                "bundle_hash_mismatch",
                "/bundle_signature/bundle_sha256",
                f"bundle_sha256 is {sig['bundle_sha256']!r}, the bundle hashes to {computed!r}",
            )
        self._signed("/bundle_signature", sig, computed, "bundle_signature_invalid")
        return computed

    def _state(
        self,
        valid: list[bool],
        reasons: dict[int, list[str]],
        groups: list[Equivocation],
        number: str,
    ) -> dict[str, Any]:
        """Check the served state; the state as it should be (the served one when equal)."""
        doc, parts = self.doc, self.parts
        served = doc["state"]
        served_canon = parts.state_without_sha256(served)
        served_sha = sha256_hex(served_canon)
        if served["state_sha256"] != served_sha:
            self.add(
                "state_hash_mismatch",
                "/state/state_sha256",
                f"state_sha256 is {served['state_sha256']!r}, the state hashes to {served_sha!r}",
            )
        if served["pith_number"] != number:
            self.add(
                "pith_number_mismatch",
                "/state/pith_number",
                f"expected {number}, found {served['pith_number']!r}",
            )
        assembled = derive(
            doc,
            valid,
            reasons,
            groups,
            entry_of=parts.entry,
            canonical_record=parts.record,
        )
        if canon(assembled) == served_canon:
            return dict(served)
        recomputed = merge(doc, valid, reasons)
        where, what = first_difference(served, recomputed, "/state")
        self.add(
            "state_merge_mismatch",
            where,
            f"the served state differs from the recomputed merge: {what}",
        )
        return recomputed

    # -- timestamps (pith-format.md §5) ---------------------------------------------

    def _ts(self, path: str, value: Any, *, future_ok: bool = False) -> Timestamp | None:
        """Rule 1 for one field: it parses, and (unless `future_ok`) is not in the future."""
        ts = parse_timestamp(value)
        if ts is None:
            self.add("timestamp_invalid", path, f"{value!r} is not an RFC 3339 UTC time")
        elif not future_ok and ts.at > self.latest:
            self.add(
                "timestamp_future", path, f"{ts.text} is later than now plus the allowed clock skew"
            )
        return ts

    def _order(self, a: Timestamp | None, b: Timestamp | None, path: str, why: str) -> None:
        """a ≤ b, or a `timestamp_order` finding at `path`."""
        if a is not None and b is not None and not not_after(a, b):
            self.add("timestamp_order", path, f"{why}: {a.text} is after {b.text}")

    def _timestamps(self) -> None:
        """Rules 1–5 in one pass (rule 6, rotation, is checked with each signature).

        Only the times a later check needs are kept: each signature's `signed_at`, by
        the signature's path, and each announced `rotates_at`.
        """
        doc, ts, order, times = self.doc, self._ts, self._order, self.times
        submitted = ts(
            "/canonical_record/metadata/submitted_at",
            doc["canonical_record"]["metadata"]["submitted_at"],
        )
        built = ts("/built_at", doc["built_at"])
        for i, alias in enumerate(doc["source_aliases"]):
            if "created_at" in alias:
                path = f"/source_aliases/{i}/created_at"
                order(
                    ts(path, alias["created_at"]),
                    built,
                    "/built_at",
                    f"alias {i} is newer than the build",
                )
        for i, event in enumerate(doc["events"]):
            base = f"/events/{i}"
            created = ts(base + "/created_at", event["created_at"])
            signed = times[base + "/signature"] = ts(
                base + "/signature/signed_at", event["signature"]["signed_at"]
            )
            if event["event_type"] == "record_created":
                receipt = event["payload"]["receipt"]
                rbase = base + "/payload/receipt"
                r_signed = times[rbase] = ts(rbase + "/signed_at", receipt["signed_at"])
                first = ts(rbase + "/first_computed_at", receipt["first_computed_at"])
                last = ts(rbase + "/last_reissued_at", receipt["last_reissued_at"])
                order(
                    submitted,
                    created,
                    base + "/created_at",
                    "the record was created before the paper was submitted",
                )
                order(
                    first,
                    last,
                    rbase + "/last_reissued_at",
                    "the receipt was reissued before it was first computed",
                )
                order(
                    first,
                    r_signed,
                    rbase + "/signed_at",
                    "the receipt was signed before it was first computed",
                )
            order(
                created,
                signed,
                base + "/signature/signed_at",
                "the event was signed before it was created",
            )
            order(created, built, "/built_at", f"event {i} is newer than the build")
        bundle_signed = times["/bundle_signature"] = ts(
            "/bundle_signature/signed_at", doc["bundle_signature"]["signed_at"]
        )
        order(
            built,
            bundle_signed,
            "/bundle_signature/signed_at",
            "the bundle was signed before it was built",
        )
        for i, key in enumerate(doc["public_keys"]):
            if key.get("rotates_at") is not None:
                path = f"/public_keys/{i}/rotates_at"
                times[path] = ts(path, key["rotates_at"], future_ok=True)


# -- the fast path: a bundle with nothing wrong ----------------------------------------


class _Unclean(Exception):
    """Something in the bundle may be wrong: the complete check must look and say what."""


def clean_bundle_report(
    doc: Any, trust: TrustSet, latest: datetime, expected_suffix: str | None
) -> Report | None:
    """The report of a bundle on which every rule holds, or None when any might not.

    The usual bundle is whole, and `_BundleCheck`, which builds a pointer and a message
    for every check it makes, costs more than the hashes and signatures themselves. This
    asks the same questions with nothing to explain and gives up at the first doubt; the
    complete check, the reference, then runs on the exact reading of the bytes. Giving up
    too often only costs time; a report from here must be the one `_BundleCheck` gives
    (tests/test_fast_paths.py compares them).
    """
    if not _clean_shape(doc):
        return None
    try:
        return _CleanCheck(doc, trust, latest, expected_suffix).run()
    except _Unclean:
        return None


def _clean_shape(doc: Any) -> bool:
    """`_bundle_shape` finds nothing (and `_BundleCheck._keys` no inconsistent key)."""
    if not schema.fits(doc, schema.BUNDLE):
        return False
    created = [e for e in doc["events"] if e["event_type"] == "record_created"]
    return (
        bool(created)
        and all(schema.fits(e["payload"], schema.RECORD_CREATED_PAYLOAD) for e in created)
        and not any(key_problems(key) for key in doc["public_keys"])
    )


@dataclass(slots=True)
class _CleanCheck:
    """`_BundleCheck`'s rules as questions only; any doubt raises `_Unclean`."""

    doc: dict[str, Any]
    trust: TrustSet
    latest: datetime
    expected_suffix: str | None
    parts: Parts = field(init=False)
    rotates: dict[str, Timestamp] = field(default_factory=dict)

    def run(self) -> Report:
        doc = self.doc
        parts = self.parts = Parts.of(doc)
        self._keys()
        self._timestamps()
        canonical = sha256_hex(parts.record.data)
        number = self._pith_number(canonical)
        infos = tuple(self._event(i, e, number) for i, e in enumerate(doc["events"]))
        self._record_created(canonical)
        bundle_sha = sha256_hex(parts.bundle(doc))
        sig = doc["bundle_signature"]
        _hold(sig["bundle_sha256"] == bundle_sha)
        self._signed(sig, bundle_sha)
        _hold(not equivocation_groups(doc["events"], [True] * len(infos)))
        self._state(number)
        return Report(
            "bundle",
            number,
            (),
            document=doc,
            bundle_sha256=bundle_sha,
            built_at=doc["built_at"],
            events=infos,
            state=dict(doc["state"]),
        )

    def _keys(self) -> None:
        for key in self.doc["public_keys"]:
            trusted = self.trust.get(key["key_id"])
            if trusted is None:
                continue
            _hold(trusted.published_as(key.get("public_key_hex"), key.get("public_key_b64")))
            if key.get("rotates_at") is not None:
                self.rotates[trusted.key_id] = self._time(key["rotates_at"], future_ok=True)
        _add_configured_rotations(self.rotates, self.trust)

    def _signed(self, sig: dict[str, Any], digest: str) -> None:
        """The signature is by a trusted key, before it rotated, over `digest`."""
        key = self.trust.get(sig["key_id"])
        _hold(key is not None)
        assert key is not None  # for mypy: _hold raised otherwise
        _hold(sig["public_key_fingerprint"] == key.fingerprint_hex)
        rotates = self.rotates.get(key.key_id)
        if rotates is not None:
            _hold(not self._time(sig["signed_at"]).at > rotates.at)
        _hold(verify_signature(key.raw, digest, sig["signature_b64"]))

    def _pith_number(self, canonical: str) -> str:
        doc = self.doc
        # The number must be pith_number(canonical, submitted_at): its prefix, then the
        # suffix, read back rather than encoded (pith.is_suffix_of).
        number: str = doc["pith_number"]
        prefix = f"pith:{doc['canonical_record']['metadata']['submitted_at'][:4]}:"
        suffix = number[len(prefix) :]
        _hold(doc["canonical_sha256"] == canonical and number.startswith(prefix))
        _hold(is_suffix_of(suffix, canonical))
        _hold(self.expected_suffix is None or suffix == self.expected_suffix)
        _hold(doc.get("short_pith_number", f"pith:{suffix[:8]}") == f"pith:{suffix[:8]}")
        aliases = short_aliases(suffix)
        for alias in doc["source_aliases"]:
            want = aliases.get(alias["alias_kind"])
            _hold(want is None or alias["alias_value"] == want)
        return number

    def _event(self, i: int, event: dict[str, Any], number: str) -> EventInfo:
        content = sha256_hex(self.parts.event_content(i, event))
        signer, sig = event["signer"], event["signature"]
        _hold(
            event["content_sha256"] == content
            and event["event_id"] == "sha256:" + content
            and event["subject_pith_number"] == number
            and signer["key_id"] == sig["key_id"]
            and signer["public_key_fingerprint"] == sig["public_key_fingerprint"]
        )
        self._signed(sig, content)
        return EventInfo(
            i,
            event["event_id"],
            event["event_type"],
            content,
            sig["key_id"],
            event["prev_event"],
            tuple(event["supersedes"]),
            True,
        )

    def _record_created(self, canonical: str) -> None:
        for event in self.doc["events"]:
            if event["event_type"] == "record_created":
                payload = event["payload"]
                _hold(
                    H(payload["canonical_record"]) == canonical
                    and payload["canonical_sha256"] == canonical
                    and payload["receipt"]["canonical_sha256"] == canonical
                )
                self._signed(payload["receipt"], canonical)

    def _state(self, number: str) -> None:
        doc, parts = self.doc, self.parts
        served = doc["state"]
        served_canon = parts.state_without_sha256(served)
        _hold(served["state_sha256"] == sha256_hex(served_canon))
        _hold(served["pith_number"] == number)
        valid = [True] * len(doc["events"])
        assembled = derive(doc, valid, {}, [], entry_of=parts.entry, canonical_record=parts.record)
        _hold(canon(assembled) == served_canon)

    # -- timestamps (pith-format.md §5) ---------------------------------------------

    def _time(self, value: str, *, future_ok: bool = False) -> Timestamp:
        """Rule 1: `value` parses and (unless `future_ok`) is not in the future."""
        ts = parse_timestamp(value)
        _hold(ts is not None)
        assert ts is not None  # for mypy: _hold raised otherwise
        _hold(future_ok or not ts.at > self.latest)
        return ts

    def _timestamps(self) -> None:
        """Rules 1–5, as `_BundleCheck._timestamps` checks them (6 is in `_signed`)."""
        doc, time = self.doc, self._time
        submitted = time(doc["canonical_record"]["metadata"]["submitted_at"])
        built = time(doc["built_at"])
        for alias in doc["source_aliases"]:
            if "created_at" in alias:
                _hold(not_after(time(alias["created_at"]), built))
        for event in doc["events"]:
            created = time(event["created_at"])
            _hold(not_after(created, time(event["signature"]["signed_at"])))
            _hold(not_after(created, built))
            if event["event_type"] == "record_created":
                receipt = event["payload"]["receipt"]
                first = time(receipt["first_computed_at"])
                _hold(not_after(submitted, created))
                _hold(not_after(first, time(receipt["last_reissued_at"])))
                _hold(not_after(first, time(receipt["signed_at"])))
        _hold(not_after(built, time(doc["bundle_signature"]["signed_at"])))


def _hold(condition: bool) -> None:
    """A rule of the format holds, or the bundle is not the clean case."""
    if not condition:
        raise _Unclean


def _add_configured_rotations(rotates: dict[str, Timestamp], trust: TrustSet) -> None:
    """Complete the rotations a bundle announces (`rotates`, by key id) with the trust
    set's own: a configured rotation wins when it is earlier (rule 6)."""
    for key_id, trusted in trust.items():
        if trusted.rotates_at is not None and (
            key_id not in rotates or trusted.rotates_at.at < rotates[key_id].at
        ):
            rotates[key_id] = trusted.rotates_at


def first_difference(a: Any, b: Any, path: str, depth: int = 0) -> tuple[str, str]:
    """The first place where two JSON values differ, as (pointer, description)."""
    if depth > 32 or type(a) is not type(b):
        return path, f"found {_brief(a)}, expected {_brief(b)}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key == "state_sha256" and depth == 0:
                continue
            if key not in a:
                return f"{path}/{key}", "missing"
            if key not in b:
                return f"{path}/{key}", "not expected"
            if canon(a[key]) != canon(b[key]):
                return first_difference(a[key], b[key], f"{path}/{key}", depth + 1)
    elif isinstance(a, list):
        if len(a) != len(b):
            return path, f"{len(a)} items, expected {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if canon(x) != canon(y):
                return first_difference(x, y, f"{path}/{i}", depth + 1)
    return path, f"found {_brief(a)}, expected {_brief(b)}"


def _brief(value: Any) -> str:
    text = canon(value).decode("utf-8", "replace")
    return text if len(text) <= 80 else text[:77] + "..."
