"""The verifier: whether a Pith document can be trusted, as a report of findings.

Owns every per-document rule of pith-format.md: hashes, Pith Number binding, key and
signature checks against a configured trust set, the merge comparison, the timestamp
rules §5 (1–6) and equivocation inside one bundle. Pure: bytes and `now` in, a
`Report` out; hostile input gives findings, never an exception. It does not compare a
document with earlier ones (`timeline`) or with other mirrors (`divergence`).

Modules: `report` (the verdict, and what both checks share), `complete` (every rule,
with findings: the reference), `timestamp_rules` (its §5 rules 1–5) and `clean` (the
fast path for a bundle with nothing wrong). This module is the entry: it reads the bytes
and picks the check.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pithcrawl import schema
from pithcrawl.canon import MalformedJSON, parse, parse_compact
from pithcrawl.findings import Finding, finding
from pithcrawl.keys import TrustSet
from pithcrawl.merge import state_sha256
from pithcrawl.verify.clean import clean_bundle_report
from pithcrawl.verify.complete import BundleCheck, bundle_shape
from pithcrawl.verify.report import (
    DEFAULT_CLOCK_SKEW,
    EVENT_INVALIDATING,
    EventInfo,
    Report,
    first_difference,
)

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "EVENT_INVALIDATING",
    "EventInfo",
    "Report",
    "clean_bundle_report",
    "first_difference",
    "verify",
    "verify_archived",
    "verify_bundle",
    "verify_bundle_document",
    "verify_state",
    "verify_state_document",
]


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


def verify_archived(
    data: bytes,
    kind: str,
    trust: TrustSet,
    *,
    fetched_at: datetime,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    expected_suffix: str | None = None,
) -> Report:
    """A body the archive kept, judged again: as of when it was fetched (a time in the
    future then was as wrong then as it is now; a key's rotation is about when it
    signed, not when it is read), under the keys of now. The one rule that `fsck`,
    `serve` and the keys learned from rotations judge archived bodies by."""
    if kind == "state":
        return verify_state(data, expected_suffix=expected_suffix)
    return verify_bundle(
        data, trust, now=fetched_at, clock_skew=clock_skew, expected_suffix=expected_suffix
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
    problems = list(bundle_shape(doc))
    if problems:
        claimed = doc.get("pith_number") if isinstance(doc, dict) else None
        return Report(
            "bundle",
            claimed if isinstance(claimed, str) else None,
            tuple(finding("schema_invalid", p, m) for p, m in problems),
            document=doc,
        )
    try:
        return BundleCheck(doc, trust, now + clock_skew, expected_suffix).run()
    except RecursionError:
        # `parse` refuses what nests past canon.MAX_DEPTH; a tree built by other means
        # still gets a finding, never an exception.
        claimed = doc.get("pith_number")
        return Report(
            "bundle",
            claimed if isinstance(claimed, str) else None,
            (finding("malformed_json", "", "nested too deeply"),),
        )


def verify_state(data: bytes, *, expected_suffix: str | None = None) -> Report:
    """Verify a `state.json` on its own: shape, `state_sha256`, the number's form."""
    fast = parse_compact(data)
    if fast is not None:
        report = verify_state_document(fast, expected_suffix=expected_suffix)
        if not report.findings:
            return report
        del fast  # any finding is told from the exact reading, as for a bundle
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
