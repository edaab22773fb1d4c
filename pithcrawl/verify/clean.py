"""The clean path: a bundle with nothing wrong, proved so without building findings.

Asks every question `complete.BundleCheck` asks and gives up at the first doubt, so the
complete check, the reference, can say what is wrong. tests/test_fast_paths.py holds
them to the same reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pithcrawl import schema
from pithcrawl.canon import H, canon, sha256_hex
from pithcrawl.keys import TrustSet, key_problems, verify_signature
from pithcrawl.merge import derive, equivocation_groups
from pithcrawl.pith import is_suffix_of, short_aliases
from pithcrawl.timestamps import Timestamp, not_after, parse_timestamp
from pithcrawl.verify.report import EventInfo, Parts, Report, add_configured_rotations


class _Unclean(Exception):
    """Something in the bundle may be wrong: the complete check must look and say what."""


def clean_bundle_report(
    doc: Any, trust: TrustSet, latest: datetime, expected_suffix: str | None
) -> Report | None:
    """The report of a bundle on which every rule holds, or None when any might not.

    The usual bundle is whole, and `BundleCheck`, which builds a pointer and a message
    for every check it makes, costs more than the hashes and signatures themselves. This
    asks the same questions with nothing to explain and gives up at the first doubt; the
    complete check, the reference, then runs on the exact reading of the bytes. Giving up
    too often only costs time; a report from here must be the one `BundleCheck` gives
    (tests/test_fast_paths.py compares them).
    """
    if not clean_shape(doc):
        return None
    try:
        return CleanCheck(doc, trust, latest, expected_suffix).run()
    except _Unclean:
        return None


def clean_shape(doc: Any) -> bool:
    """`bundle_shape` finds nothing (and `BundleCheck._keys` no inconsistent key)."""
    if not schema.fits(doc, schema.BUNDLE):
        return False
    created = [e for e in doc["events"] if e["event_type"] == "record_created"]
    return (
        bool(created)
        and all(schema.fits(e["payload"], schema.RECORD_CREATED_PAYLOAD) for e in created)
        and not any(key_problems(key) for key in doc["public_keys"])
    )


@dataclass(slots=True)
class CleanCheck:
    """`BundleCheck`'s rules as questions only; any doubt raises `_Unclean`."""

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
        add_configured_rotations(self.rotates, self.trust)

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
        """Rules 1–5, as `BundleCheck._timestamps` checks them (6 is in `_signed`)."""
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
