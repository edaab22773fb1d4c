"""Findings: what the verifier says about a document, as data.

Owns the finding codes and their severities (the table of `contract.md`), the
`Finding` value and JSON Pointer construction. It does not decide *when* a code
applies: that is `verify`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pithcrawl.text import bounded


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


#: code -> severity, exactly as the contract's table.
CODES: dict[str, Severity] = {
    "malformed_json": Severity.CRITICAL,
    "schema_invalid": Severity.CRITICAL,
    "canonical_hash_mismatch": Severity.CRITICAL,
    "pith_number_mismatch": Severity.CRITICAL,
    "receipt_signature_invalid": Severity.CRITICAL,
    "event_hash_mismatch": Severity.CRITICAL,
    "event_signature_invalid": Severity.CRITICAL,
    "event_subject_mismatch": Severity.CRITICAL,
    "bundle_hash_mismatch": Severity.CRITICAL,
    "bundle_signature_invalid": Severity.CRITICAL,
    "state_hash_mismatch": Severity.CRITICAL,
    "state_merge_mismatch": Severity.WARNING,
    "untrusted_key": Severity.CRITICAL,
    "key_mismatch": Severity.CRITICAL,
    "key_expired": Severity.CRITICAL,
    "timestamp_invalid": Severity.CRITICAL,
    "timestamp_future": Severity.CRITICAL,
    "timestamp_order": Severity.CRITICAL,
    "equivocation": Severity.CRITICAL,
}


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    path: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": str(self.severity),
            "path": self.path,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Finding:
        return cls(obj["code"], Severity(obj["severity"]), obj["path"], obj["message"])


#: How long a finding's path and message may be: they may quote a document (a key, a
#: value), and a hostile one must not make an alert's text (a hook's environment, a
#: log line, a table row) as long as itself.
PATH_MAX = 300
MESSAGE_MAX = 500


def finding(code: str, path: str, message: str) -> Finding:
    """A finding with the severity the contract gives its code, its path and message
    bounded (`PATH_MAX`, `MESSAGE_MAX`)."""
    return Finding(code, CODES[code], bounded(path, PATH_MAX), bounded(message, MESSAGE_MAX))


def pointer(*parts: str | int) -> str:
    """An RFC 6901 JSON Pointer from path parts: pointer("events", 0) == "/events/0"."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def is_critical(findings: list[Finding] | tuple[Finding, ...]) -> bool:
    return any(f.severity is Severity.CRITICAL for f in findings)


#: How many findings of one document the archive keeps with its snapshot, its event and
#: its alert: a hostile body can hold tens of thousands, each worth nothing more than
#: the first (the archived body gives them all again: `pithcrawl verify`).
FINDINGS_KEPT = 50


def kept(findings: tuple[Finding, ...] | list[Finding]) -> dict[str, Any]:
    """The evidence of a document's findings: the first `FINDINGS_KEPT`, and how many
    there were in all when that is more."""
    doc: dict[str, Any] = {"findings": [f.to_json() for f in findings[:FINDINGS_KEPT]]}
    if len(findings) > FINDINGS_KEPT:
        doc["findings_total"] = len(findings)
    return doc
