"""The clean path: a bundle with nothing wrong, proved so without building findings.

Asks every question `complete.BundleCheck` asks and gives up at the first doubt, so the
complete check, the reference, can say what is wrong. tests/test_fast_paths.py holds
them to the same reports.

Written for speed, as one flat pass: every hash is assembled around canonical bytes
computed once (`orjson.Fragment`s, which orjson embeds without a callback), and a rule
that fails raises `_Unclean` in line rather than through a helper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from pithcrawl import schema
from pithcrawl.canon import sha256_hex
from pithcrawl.keys import TrustSet, key_problems, verify_signature
from pithcrawl.merge import derive, entry, equivocation_groups
from pithcrawl.pith import is_suffix_of, short_aliases
from pithcrawl.timestamps import Timestamp, not_after, parse_timestamp_text
from pithcrawl.verify.report import EventInfo, Report, add_configured_rotations

_Fragment = orjson.Fragment
_fits_bundle = schema.validator(schema.BUNDLE)
_fits_record_created = schema.validator(schema.RECORD_CREATED_PAYLOAD)
_SORT_KEYS = orjson.OPT_SORT_KEYS
#: `EventInfo(*fields)` without the named tuple's generated `__new__` (one per event).
_new_info = tuple.__new__


class _Unclean(Exception):
    """Something in the bundle may be wrong: the complete check must look and say what."""


def _canon(value: Any, _dumps: Any = orjson.dumps, _option: int = _SORT_KEYS) -> bytes:
    """`canon.canon(value)` for a tree of plain JSON values and fragments.

    Without `canon`'s fallbacks: whatever orjson cannot write alone (an integer past 64
    bits, a lone surrogate, a float subclass) raises `orjson.JSONEncodeError`, a doubt
    `clean_bundle_report` leaves to the complete check. What orjson writes alone it
    writes exactly as `canon` does, which asks it first.
    """
    result: bytes = _dumps(value, option=_option)
    return result


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
    except (_Unclean, orjson.JSONEncodeError):
        return None


def clean_shape(doc: Any) -> bool:
    """`bundle_shape` finds nothing (and `BundleCheck._keys` no inconsistent key)."""
    if not _fits_bundle(doc):
        return False
    created = False
    for event in doc["events"]:
        if event["event_type"] == "record_created":
            if not _fits_record_created(event["payload"]):
                return False
            created = True
    return created and not any(key_problems(key) for key in doc["public_keys"])


@dataclass(slots=True)
class CleanCheck:
    """`BundleCheck`'s rules as questions only; any doubt raises `_Unclean`."""

    doc: dict[str, Any]
    trust: TrustSet
    latest: datetime
    expected_suffix: str | None
    rotates: Mapping[str, Timestamp] = field(default_factory=dict)
    #: (raw key, digest, signature) of every signature, checked last and together: the
    #: cheap rules give up first, and the Ed25519 code runs back to back, cache-warm.
    signatures: list[tuple[bytes, str, str]] = field(default_factory=list)

    def run(self) -> Report:
        doc = self.doc
        events: list[dict[str, Any]] = doc["events"]
        self._keys()
        self._timestamps()
        record = _canon(doc["canonical_record"])
        canonical = sha256_hex(record)
        number = self._pith_number(canonical)
        record_fragment = _Fragment(record)
        # Each event's content, then the same dict made whole again for the bundle.
        signed = self._signed
        payloads = []
        whole = []
        infos = []
        chained = False
        for i, event in enumerate(events):
            content = event.copy()
            sig = content.pop("signature")
            claimed_sha = content.pop("content_sha256")
            event_id = content.pop("event_id")
            content["payload"] = payload = _Fragment(_canon(event["payload"]))
            payloads.append(payload)
            digest = sha256_hex(_canon(content))
            signer = event["signer"]
            if not (
                claimed_sha == digest
                and event_id == "sha256:" + digest
                and event["subject_pith_number"] == number
                and signer["key_id"] == sig["key_id"]
                and signer["public_key_fingerprint"] == sig["public_key_fingerprint"]
            ):
                raise _Unclean
            signed(sig, digest)
            content["signature"] = sig
            content["content_sha256"] = claimed_sha
            content["event_id"] = event_id
            whole.append(content)
            infos.append(
                _new_info(
                    EventInfo,
                    (
                        i,
                        event_id,
                        event["event_type"],
                        digest,
                        sig["key_id"],
                        event["prev_event"],
                        tuple(event["supersedes"]),
                        True,
                    ),
                )
            )
            if event["prev_event"] is not None or event["supersedes"]:
                chained = True
        self._record_created(record, canonical)
        current = _Fragment(_canon(doc["state"]["current"]))
        self._state(number, record_fragment, payloads, current)
        top = doc.copy()
        sig = top.pop("bundle_signature")
        top["canonical_record"] = record_fragment
        top["events"] = whole
        top["state"] = doc["state"] | {"current": current}
        bundle_sha = sha256_hex(_canon(top))
        if sig["bundle_sha256"] != bundle_sha:
            raise _Unclean
        signed(sig, bundle_sha)
        if chained and equivocation_groups(events, [True] * len(events)):
            raise _Unclean
        for raw, digest, signature in self.signatures:
            if not verify_signature(raw, digest, signature):
                raise _Unclean
        return Report(
            "bundle",
            number,
            (),
            document=doc,
            bundle_sha256=bundle_sha,
            built_at=doc["built_at"],
            events=tuple(infos),
            state=dict(doc["state"]),
        )

    def _keys(self) -> None:
        trust = self.trust
        announced: dict[str, Timestamp] = {}
        for key in self.doc["public_keys"]:
            rotates_at = key.get("rotates_at")
            # Every key's time must parse (rule 1), trusted or not.
            ts = None if rotates_at is None else parse_timestamp_text(rotates_at)
            if rotates_at is not None and ts is None:
                raise _Unclean
            trusted = trust.get(key["key_id"])
            if trusted is None:
                continue
            if not trusted.published_as(key.get("public_key_hex"), key.get("public_key_b64")):
                raise _Unclean
            if ts is not None:
                earlier = announced.get(trusted.key_id)
                # A key listed twice: the earliest rotation announced counts (rule 6).
                if earlier is None or ts.at < earlier.at:
                    announced[trusted.key_id] = ts
        if announced:
            add_configured_rotations(announced, trust)
            self.rotates = announced
        else:
            # What add_configured_rotations makes of no announcement: the trust set's own.
            self.rotates = trust.rotations

    def _signed(self, sig: dict[str, Any], digest: str) -> None:
        """The signature is by a trusted key, before it rotated, over `digest` (the
        Ed25519 check itself is queued for the end of `run`)."""
        key = self.trust.get(sig["key_id"])
        if key is None or sig["public_key_fingerprint"] != key.fingerprint_hex:
            raise _Unclean
        if self.rotates:
            rotates = self.rotates.get(key.key_id)
            if rotates is not None and self._time(sig["signed_at"]).at > rotates.at:
                raise _Unclean
        self.signatures.append((key.raw, digest, sig["signature_b64"]))

    def _pith_number(self, canonical: str) -> str:
        doc = self.doc
        # The number must be pith_number(canonical, submitted_at): its prefix, then the
        # suffix, read back rather than encoded (pith.is_suffix_of).
        number: str = doc["pith_number"]
        prefix = f"pith:{doc['canonical_record']['metadata']['submitted_at'][:4]}:"
        suffix = number[len(prefix) :]
        short = "pith:" + suffix[:8]
        if not (
            doc["canonical_sha256"] == canonical
            and number.startswith(prefix)
            and is_suffix_of(suffix, canonical)
            and (self.expected_suffix is None or suffix == self.expected_suffix)
            and doc.get("short_pith_number", short) == short
        ):
            raise _Unclean
        aliases = short_aliases(suffix)
        for alias in doc["source_aliases"]:
            want = aliases.get(alias["alias_kind"])
            if want is not None and alias["alias_value"] != want:
                raise _Unclean
        return number

    def _record_created(self, record: bytes, canonical: str) -> None:
        for event in self.doc["events"]:
            if event["event_type"] == "record_created":
                payload = event["payload"]
                receipt = payload["receipt"]
                if not (
                    _canon(payload["canonical_record"]) == record
                    and payload["canonical_sha256"] == canonical
                    and receipt["canonical_sha256"] == canonical
                ):
                    raise _Unclean
                self._signed(receipt, canonical)

    def _state(self, number: str, record: Any, payloads: list[Any], current: Any) -> None:
        doc = self.doc
        served = doc["state"].copy()
        claimed_sha = served.pop("state_sha256")
        served["current"] = current
        served_canon = _canon(served)
        if claimed_sha != sha256_hex(served_canon) or served["pith_number"] != number:
            raise _Unclean

        def entry_of(i: int, event: Any) -> dict[str, Any]:
            made = entry(event)
            made["payload"] = payloads[i]
            return made

        valid = [True] * len(doc["events"])
        assembled = derive(doc, valid, {}, [], entry_of=entry_of, canonical_record=record)
        if _canon(assembled) != served_canon:
            raise _Unclean

    # -- timestamps (pith-format.md §5) ---------------------------------------------

    def _time(self, value: str) -> Timestamp:
        """Rule 1: `value` parses and is not in the future."""
        ts = parse_timestamp_text(value)
        if ts is None or ts.at > self.latest:
            raise _Unclean
        return ts

    def _timestamps(self) -> None:
        """Rules 1–5, as `timestamp_rules.check_timestamps` checks them (6 is in `_signed`)."""
        doc, time = self.doc, self._time
        submitted = time(doc["canonical_record"]["metadata"]["submitted_at"])
        built = time(doc["built_at"])
        for alias in doc["source_aliases"]:
            if "created_at" in alias and not not_after(time(alias["created_at"]), built):
                raise _Unclean
        for event in doc["events"]:
            created = time(event["created_at"])
            if not (
                not_after(created, time(event["signature"]["signed_at"]))
                and not_after(created, built)
            ):
                raise _Unclean
            if event["event_type"] == "record_created":
                receipt = event["payload"]["receipt"]
                first = time(receipt["first_computed_at"])
                if not (
                    not_after(submitted, created)
                    and not_after(first, time(receipt["last_reissued_at"]))
                    and not_after(first, time(receipt["signed_at"]))
                ):
                    raise _Unclean
        if not not_after(built, time(doc["bundle_signature"]["signed_at"])):
            raise _Unclean
