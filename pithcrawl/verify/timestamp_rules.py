"""The complete check's timestamp rules: pith-format.md §5, rules 1–5, over one bundle.

Owns which of a bundle's fields are timestamps, the findings `timestamp_invalid`,
`timestamp_future` and `timestamp_order` with their pointers and messages, and the times
a later check needs (each signature's `signed_at`, each announced `rotates_at`). It does
not own parsing or comparing one timestamp (`pithcrawl.timestamps`), rule 6 (a rotated
key signs nothing after `rotates_at`: `complete` checks it with each signature, from the
times returned here), rule 7 (history, `timeline`), or the clean path's own reading of
the same rules (`clean`). Pure: `latest` (now plus the clock skew) is a parameter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pithcrawl.findings import Finding, finding
from pithcrawl.timestamps import Timestamp, not_after, parse_timestamp


def check_timestamps(
    doc: dict[str, Any], latest: datetime, findings: list[Finding]
) -> dict[str, Timestamp | None]:
    """Rules 1–5 in one pass over a well-shaped bundle (rule 6, rotation, is checked with
    each signature); each failure is appended to `findings`.

    Only the times a later check needs are kept: each signature's `signed_at`, by
    the signature's path, and each announced `rotates_at`.
    """
    times: dict[str, Timestamp | None] = {}

    def ts(path: str, value: Any, *, future_ok: bool = False) -> Timestamp | None:
        """Rule 1 for one field: it parses, and (unless `future_ok`) is not in the future."""
        parsed = parse_timestamp(value)
        if parsed is None:
            findings.append(
                finding("timestamp_invalid", path, f"{value!r} is not an RFC 3339 UTC time")
            )
        elif not future_ok and parsed.at > latest:
            findings.append(
                finding(
                    "timestamp_future",
                    path,
                    f"{parsed.text} is later than now plus the allowed clock skew",
                )
            )
        return parsed

    def order(a: Timestamp | None, b: Timestamp | None, path: str, why: str) -> None:
        """a ≤ b, or a `timestamp_order` finding at `path`."""
        if a is not None and b is not None and not not_after(a, b):
            findings.append(finding("timestamp_order", path, f"{why}: {a.text} is after {b.text}"))

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
    return times
