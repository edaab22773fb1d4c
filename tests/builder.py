"""Build and sign Pith bundles with a test key, independently of pithcrawl's code.

Everything here follows pith-format.md directly with the standard library and nacl,
so that pithcrawl's verifier is checked against a second reading of the spec rather
than against itself. Later tests build whole mirrors from it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import nacl.signing


def canon(x: Any) -> bytes:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def H(x: Any) -> str:
    return hashlib.sha256(canon(x)).hexdigest()


def serialize(doc: Any) -> bytes:
    """Bytes as the registry serves them: compact, insertion order, UTF-8."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class TestSigner:
    """An Ed25519 registry key made up for the tests."""

    __test__ = False  # not a pytest class

    def __init__(self, key_id: str = "test-key-1", seed: bytes | None = None) -> None:
        self.key_id = key_id
        self.signing = nacl.signing.SigningKey(seed or hashlib.sha256(key_id.encode()).digest())
        self.raw = bytes(self.signing.verify_key)
        self.fingerprint = hashlib.sha256(self.raw).digest()[:16].hex()

    def public_key(self, rotates_at: str | None = None) -> dict[str, Any]:
        """The key in the shape of a bundle's public_keys[] entry (and a key file)."""
        return {
            "key_id": self.key_id,
            "algorithm": "ed25519",
            "format": "raw",
            "public_key_b64": base64.b64encode(self.raw).decode(),
            "public_key_hex": self.raw.hex(),
            "fingerprint_sha256_b32_first128bits": base64.b32encode(
                hashlib.sha256(self.raw).digest()
            ).decode()[:26],
            "fingerprint_sha256_hex": self.fingerprint,
            "rotates_at": rotates_at,
            "url": f"https://registry.test/{self.key_id}.json",
            "notes": "test key",
        }

    def sign_digest(self, digest_hex: str) -> str:
        return base64.b64encode(self.signing.sign(bytes.fromhex(digest_hex)).signature).decode()

    def signature_block(self, digest_hex: str, signed_at: str, message: str) -> dict[str, Any]:
        return {
            "signature_status": "signed_v1",
            "algorithm": "ed25519",
            "key_id": self.key_id,
            "public_key_fingerprint": self.fingerprint,
            "signature_b64": self.sign_digest(digest_hex),
            "signed_message": message,
            "signed_at": signed_at,
        }

    def signer(self) -> dict[str, Any]:
        return {
            "signer_id": "registry.test",
            "signer_type": "pith_registry",
            "key_id": self.key_id,
            "public_key_fingerprint": self.fingerprint,
        }


def canonical_record(
    arxiv_id: str = "2611.00001", submitted_at: str = "2026-11-01T10:00:00Z", title: str = "T"
) -> dict[str, Any]:
    return {
        "source": {"id": arxiv_id, "kind": "arxiv", "version": 1},
        "metadata": {
            "license": "http://creativecommons.org/licenses/by/4.0/",
            "primary_cat": "cs.CR",
            "submitted_at": submitted_at,
            "cross_cats_sorted": [],
            "title_canon_sha256": hashlib.sha256(title.lower().encode()).hexdigest(),
            "abstract_canon_sha256": hashlib.sha256(b"an abstract").hexdigest(),
        },
        "schema_version": "1.0",
    }


def suffix_of(canonical_sha256: str) -> str:
    return base64.b32encode(bytes.fromhex(canonical_sha256)).decode()[:26]


PLURALS = {
    "graph_snapshot": "graph_snapshots",
}
CURRENT_LISTS = [
    "graph_snapshots",
    "author_attestations",
    "timestamp_anchors",
    "storage_attestations",
    "citation_signatures",
    "replication_records",
    "corrections",
    "mirror_hints",
]


def merged_state(bundle: dict[str, Any]) -> dict[str, Any]:
    """The state of a bundle whose events are all valid (pith-format.md §4)."""

    def entry(e: dict[str, Any]) -> dict[str, Any]:
        return {k: e[k] for k in ("event_id", "target", "created_at", "signer", "payload")}

    current: dict[str, Any] = {
        "canonical_record": bundle["canonical_record"],
        "source_aliases": bundle["source_aliases"],
        **{name: [] for name in CURRENT_LISTS},
    }
    current["record_created"] = next(
        entry(e) for e in bundle["events"] if e["event_type"] == "record_created"
    )
    for e in bundle["events"]:
        if e["event_type"] != "record_created":
            current.setdefault(e["event_type"] + "s", []).append(entry(e))
    state = {
        "state_type": "pith_open_graph_state",
        "state_version": "1.0",
        "pith_number": bundle["pith_number"],
        "merge_version": "pith-open-graph-merge-v1",
        "event_count": len(bundle["events"]),
        "valid_event_count": len(bundle["events"]),
        "invalid_event_count": 0,
        "equivocation_count": 0,
        "current": current,
        "equivocations": [],
        "invalid_events": [],
        "applied_event_ids": [e["event_id"] for e in bundle["events"]],
    }
    state["state_sha256"] = H(state)
    return state


@dataclass
class BundleBuilder:
    """A record and its events, signed by `signer`; `build()` gives a complete bundle.

    Times default to a fixed, plausible story: submitted 2026-11-01, record created the
    next day, each later event an hour apart, built and signed after the last event.
    """

    signer: TestSigner = field(default_factory=TestSigner)
    record: dict[str, Any] = field(default_factory=canonical_record)
    record_created_at: str = "2026-11-02T00:00:00Z"
    events: list[dict[str, Any]] = field(default_factory=list)
    mirror_hints: list[dict[str, Any]] = field(default_factory=list)
    extra_keys: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.events:
            self.events.append(self._record_created())

    @property
    def canonical_sha256(self) -> str:
        return H(self.record)

    @property
    def suffix(self) -> str:
        return suffix_of(self.canonical_sha256)

    @property
    def pith_number(self) -> str:
        return f"pith:{self.record['metadata']['submitted_at'][:4]}:{self.suffix}"

    def _record_created(self) -> dict[str, Any]:
        sha = self.canonical_sha256
        receipt = {
            "kind": "pith_receipt",
            "key_id": self.signer.key_id,
            "algorithm": "ed25519",
            "signed_at": "2026-11-02T00:00:00.000200Z",
            "signature_b64": self.signer.sign_digest(sha),
            "signed_message": "canonical_sha256_bytes",
            "builder_version": "test-builder",
            "receipt_version": "0.3",
            "canonical_sha256": sha,
            "last_reissued_at": "2026-11-02T00:00:00.000100Z",
            "signature_status": "signed_v1",
            "first_computed_at": "2026-11-02T00:00:00.000100Z",
            "public_key_fingerprint": self.signer.fingerprint,
        }
        payload = {
            "canonical_record": copy.deepcopy(self.record),
            "canonical_sha256": sha,
            "receipt": receipt,
            "source_kind": "arxiv",
            "source_id": self.record["source"]["id"],
            "source_version": 1,
            "attestation_state": "computed",
        }
        return self.sign_event(
            {
                "event_type": "record_created",
                "subject_pith_number": self.pith_number,
                "target": "record",
                "payload": payload,
                "signer": self.signer.signer(),
                "created_at": self.record_created_at,
                "supersedes": [],
                "prev_event": None,
                "schema_version": "1.0",
            }
        )

    def sign_event(
        self, event: dict[str, Any], signer: TestSigner | None = None, signed_at: str | None = None
    ) -> dict[str, Any]:
        """Hash and sign an event (without signature/content_sha256/event_id) in place."""
        signer = signer or self.signer
        for k in ("signature", "content_sha256", "event_id"):
            event.pop(k, None)
        content = H(event)
        stamp = signed_at or event["created_at"].replace("Z", ".500000Z")
        event["signature"] = signer.signature_block(content, stamp, "open_graph_event_sha256_bytes")
        event["content_sha256"] = content
        event["event_id"] = "sha256:" + content
        return event

    def add_event(
        self,
        event_type: str = "graph_snapshot",
        payload: dict[str, Any] | None = None,
        *,
        created_at: str | None = None,
        supersedes: list[str] | None = None,
        prev_event: str | None = None,
        signer: TestSigner | None = None,
        target: str = "graph",
    ) -> dict[str, Any]:
        n = len(self.events)
        event = {
            "event_type": event_type,
            "subject_pith_number": self.pith_number,
            "target": target,
            "payload": payload if payload is not None else {"graph_snapshot": {"n": n}},
            "signer": (signer or self.signer).signer(),
            "created_at": created_at or f"2026-11-02T{n:02d}:00:00Z",
            "supersedes": supersedes or [],
            "prev_event": prev_event,
            "schema_version": "1.0",
        }
        self.events.append(self.sign_event(event, signer))
        return event

    def latest_created(self) -> str:
        return max(e["created_at"] for e in self.events)

    def build(
        self, built_at: str | None = None, signer: TestSigner | None = None
    ) -> dict[str, Any]:
        built = built_at or self.latest_created()
        suffix = self.suffix
        aliases = [
            {
                "alias_kind": "arxiv",
                "alias_value": self.record["source"]["id"],
                "created_at": self.record_created_at,
            },
            *(
                {
                    "alias_kind": f"pith_short_{n}",
                    "alias_value": suffix[:n],
                    "created_at": self.record_created_at,
                }
                for n in (8, 12, 16)
            ),
        ]
        keys = [self.signer.public_key(), *self.extra_keys]
        bundle: dict[str, Any] = {
            "bundle_type": "pith_open_graph_bundle",
            "bundle_version": "1.0",
            "pith_number": self.pith_number,
            "short_pith_number": f"pith:{suffix[:8]}",
            "canonical_record": self.record,
            "canonical_sha256": self.canonical_sha256,
            "source": self.record["source"],
            "source_aliases": aliases,
            "events": self.events,
            "timestamp_proofs": [],
            "mirror_hints": self.mirror_hints,
            "public_keys": keys,
            "merge_version": "pith-open-graph-merge-v1",
            "built_at": built,
            "links": {},
        }
        bundle["state"] = merged_state(bundle)
        return seal(copy.deepcopy(bundle), signer or self.signer)

    def bytes(self, built_at: str | None = None) -> bytes:
        return serialize(self.build(built_at))


def seal(
    bundle: dict[str, Any], signer: TestSigner, signed_at: str | None = None
) -> dict[str, Any]:
    """(Re)compute bundle_sha256 and sign it, in place; returns the bundle."""
    bundle.pop("bundle_signature", None)
    digest = H(bundle)
    block = signer.signature_block(
        digest, signed_at or bundle["built_at"].replace("Z", ".900000Z"), "bundle_sha256_bytes"
    )
    block["bundle_sha256"] = digest
    bundle["bundle_signature"] = block
    return bundle


def restate(bundle: dict[str, Any], signer: TestSigner) -> dict[str, Any]:
    """Recompute the state as if every event were valid, then re-seal."""
    bundle.pop("bundle_signature", None)
    bundle["state"] = merged_state(bundle)
    return seal(bundle, signer)
