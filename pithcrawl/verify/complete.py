"""The complete check: every rule of pith-format.md over one bundle, each failure a
finding with its JSON Pointer and message. The reference: the clean path (`clean`) must
agree with it, and defers to it at the first doubt.

Owns the shape check (`bundle_shape`) and `BundleCheck`, which runs every other rule:
keys and signatures (with §5 rule 6, rotation), the record and its Pith Number, each
event, the bundle signature, equivocation, and the served state against the merge. It
does not own the timestamp rules 1–5 (`timestamp_rules`, which it calls first), the
verdict and what both checks share (`report`), or the choice of check (the entry).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pithcrawl import schema
from pithcrawl.canon import H, canon, sha256_hex
from pithcrawl.findings import Finding, finding, pointer
from pithcrawl.keys import TrustedKey, TrustSet, key_problems, verify_signature
from pithcrawl.merge import Equivocation, derive, equivocation_groups, merge
from pithcrawl.pith import pith_number, short_aliases
from pithcrawl.timestamps import Timestamp
from pithcrawl.verify.report import (
    EVENT_INVALIDATING,
    EventInfo,
    Parts,
    Report,
    add_configured_rotations,
    first_difference,
)
from pithcrawl.verify.timestamp_rules import check_timestamps


def bundle_shape(doc: Any) -> Iterator[tuple[str, str]]:
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
    keys = doc.get("public_keys")
    for i, key in enumerate(keys if isinstance(keys, list) else ()):
        if isinstance(key, dict) and key.get("key_id") is not None:
            for fld, msg in key_problems(key):
                if fld in ("", "algorithm"):
                    yield pointer("public_keys", i, fld), msg


@dataclass(slots=True)
class BundleCheck:
    """One pass of every rule over one well-shaped bundle."""

    doc: dict[str, Any]
    trust: TrustSet
    latest: datetime  # now + clock skew: nothing may be signed or built after it
    expected_suffix: str | None
    findings: list[Finding] = field(default_factory=list)
    parts: Parts = field(init=False)
    times: dict[str, Timestamp | None] = field(init=False)  # from check_timestamps
    rotates: dict[str, Timestamp] = field(default_factory=dict)

    def add(self, code: str, path: str, message: str) -> None:
        self.findings.append(finding(code, path, message))

    def run(self) -> Report:
        doc = self.doc
        parts = self.parts = Parts.of(doc)
        self.times = check_timestamps(doc, self.latest, self.findings)
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
            earlier = self.rotates.get(trusted.key_id)
            # A key listed twice: the earliest rotation announced counts (rule 6).
            if announced is not None and (earlier is None or announced.at < earlier.at):
                self.rotates[trusted.key_id] = announced
        add_configured_rotations(self.rotates, self.trust)

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
