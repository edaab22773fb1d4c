"""Ed25519 keys, fingerprints and signature checks (pith-format.md §1).

Owns the trust set (keys that come from configuration, never from a document),
the consistency rules of a published key (raw bytes, hex and both fingerprints
agree) and the one place nacl is called. nacl's exceptions stop here. It does not
read files: the shell hands it parsed key documents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar, overload

import nacl.bindings
import nacl.exceptions

from pithcrawl.timestamps import Timestamp, parse_timestamp

_T = TypeVar("_T")


class InvalidKey(ValueError):
    """A key document is inconsistent or unusable; the message says how."""


def fingerprint_hex(raw: bytes) -> str:
    """`fingerprint_sha256_hex`: the first 16 bytes of sha256(raw), as hex."""
    return hashlib.sha256(raw).digest()[:16].hex()


def fingerprint_b32(raw: bytes) -> str:
    """`fingerprint_sha256_b32_first128bits`: the first 26 base32 characters of sha256(raw)."""
    return base64.b32encode(hashlib.sha256(raw).digest()).decode("ascii")[:26]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key pithcrawl trusts, as configured."""

    key_id: str
    raw: bytes
    rotates_at: Timestamp | None = None
    fingerprint_hex: str = field(init=False, repr=False, compare=False)
    #: The raw bytes as a document writes them; see `published_as`.
    raw_hex: str = field(init=False, repr=False, compare=False)
    raw_b64: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint_hex", fingerprint_hex(self.raw))
        object.__setattr__(self, "raw_hex", self.raw.hex())
        object.__setattr__(self, "raw_b64", base64.b64encode(self.raw).decode("ascii"))

    def published_as(self, raw_hex: str | None, raw_b64: str | None) -> bool:
        """Whether a published key's hex and base64 (either may be absent) are these bytes."""
        if raw_hex is not None and raw_hex != self.raw_hex:
            return False
        # The usual spelling is the canonical one; any other may still decode to the key.
        return raw_b64 is None or raw_b64 == self.raw_b64 or _b64_bytes(raw_b64) == self.raw

    @property
    def fingerprint_b32(self) -> str:
        return fingerprint_b32(self.raw)

    def to_json(self) -> dict[str, Any]:
        """The key in the shape of a bundle's `public_keys[]` entry."""
        return {
            "key_id": self.key_id,
            "algorithm": "ed25519",
            "format": "raw",
            "public_key_b64": base64.b64encode(self.raw).decode("ascii"),
            "public_key_hex": self.raw.hex(),
            "fingerprint_sha256_b32_first128bits": self.fingerprint_b32,
            "fingerprint_sha256_hex": self.fingerprint_hex,
            "rotates_at": self.rotates_at.text if self.rotates_at else None,
        }


_KEY_FIELDS = (
    "algorithm",
    "public_key_b64",
    "public_key_hex",
    "fingerprint_sha256_hex",
    "fingerprint_sha256_b32_first128bits",
)
#: The types whose values the cache may hold: no two of them compare equal across types
#: (an int key would share True's cache entry, and messages quote the value).
_STR_OR_NONE = frozenset({str, type(None)})


def key_problems(doc: Any) -> list[tuple[str, str]]:
    """Why a published key document is inconsistent, as (field, message) pairs.

    Empty when the key's base64 and hex bytes agree, are 32 bytes, and both
    fingerprints derive from them.
    """
    if not isinstance(doc, dict):
        return [("", "a key must be a JSON object")]
    # One display, not a generator: asked of every key of every bundle.
    fields = (
        doc.get("algorithm"),
        doc.get("public_key_b64"),
        doc.get("public_key_hex"),
        doc.get("fingerprint_sha256_hex"),
        doc.get("fingerprint_sha256_b32_first128bits"),
    )
    if _STR_OR_NONE.issuperset(map(type, fields)):
        # Every bundle publishes the same few keys: judge each distinct one once.
        return list(_key_problems_cached(fields))
    return _key_problems(doc)


@lru_cache(maxsize=256)
def _key_problems_cached(fields: tuple[str | None, ...]) -> tuple[tuple[str, str], ...]:
    doc = {k: v for k, v in zip(_KEY_FIELDS, fields, strict=True) if v is not None}
    return tuple(_key_problems(doc))


def _key_problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if doc.get("algorithm", "ed25519") != "ed25519":
        problems.append(("algorithm", f"algorithm {doc.get('algorithm')!r} is not ed25519"))
    raw = _raw_from(doc, problems)
    if raw is None:
        return problems
    fp_hex = doc.get("fingerprint_sha256_hex")
    if fp_hex is not None and fp_hex != fingerprint_hex(raw):
        problems.append(
            (
                "fingerprint_sha256_hex",
                f"fingerprint {fp_hex!r} does not derive from the key (expected "
                f"{fingerprint_hex(raw)!r})",
            )
        )
    fp_b32 = doc.get("fingerprint_sha256_b32_first128bits")
    if fp_b32 is not None and fp_b32 != fingerprint_b32(raw):
        problems.append(
            (
                "fingerprint_sha256_b32_first128bits",
                f"fingerprint {fp_b32!r} does not derive from the key (expected "
                f"{fingerprint_b32(raw)!r})",
            )
        )
    return problems


def _raw_from(doc: dict[str, Any], problems: list[tuple[str, str]]) -> bytes | None:
    b64, hexa = doc.get("public_key_b64"), doc.get("public_key_hex")
    raw_b64 = raw_hex = None
    if isinstance(b64, str):
        try:
            raw_b64 = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            problems.append(("public_key_b64", "public_key_b64 is not base64"))
    if isinstance(hexa, str):
        try:
            raw_hex = bytes.fromhex(hexa)
        except ValueError:
            problems.append(("public_key_hex", "public_key_hex is not hex"))
    if raw_b64 is None and raw_hex is None:
        if not problems:
            problems.append(("public_key_b64", "the key has neither public_key_b64 nor _hex"))
        return None
    if raw_b64 is not None and raw_hex is not None and raw_b64 != raw_hex:
        problems.append(("public_key_hex", "public_key_b64 and public_key_hex are different keys"))
        return None
    raw = raw_b64 if raw_b64 is not None else raw_hex
    assert raw is not None
    if len(raw) != 32:
        problems.append(("public_key_b64", f"an Ed25519 key has 32 bytes, not {len(raw)}"))
        return None
    return raw


def load_key(doc: Any) -> TrustedKey:
    """A trusted key from a key document (fixture `pith-v1-2026-05.key.json`'s shape)."""
    problems = key_problems(doc)
    if problems:
        raise InvalidKey("; ".join(msg for _, msg in problems))
    key_id = doc.get("key_id")
    if not isinstance(key_id, str) or not key_id:
        raise InvalidKey("the key has no key_id")
    raw = _raw_from(doc, [])
    assert raw is not None
    rotates = doc.get("rotates_at")
    rotates_at = None
    if rotates is not None:
        rotates_at = parse_timestamp(rotates)
        if rotates_at is None:
            raise InvalidKey(f"rotates_at {rotates!r} is not an RFC 3339 UTC time")
    return TrustedKey(key_id, raw, rotates_at)


class TrustSet(Mapping[str, TrustedKey]):
    """The keys pithcrawl trusts, by key_id. Immutable."""

    __slots__ = ("_keys", "rotations")

    def __init__(self, keys: Iterable[TrustedKey]) -> None:
        by_id: dict[str, TrustedKey] = {}
        for key in keys:
            if key.key_id in by_id and by_id[key.key_id].raw != key.raw:
                raise InvalidKey(f"two different keys claim key_id {key.key_id!r}")
            by_id[key.key_id] = key
        self._keys = by_id
        #: The configured `rotates_at` of each key that has one, by key id. Read only.
        self.rotations: Mapping[str, Timestamp] = {
            key_id: key.rotates_at for key_id, key in by_id.items() if key.rotates_at is not None
        }

    def __getitem__(self, key_id: str) -> TrustedKey:
        return self._keys[key_id]

    @overload
    def get(self, key_id: str, /) -> TrustedKey | None: ...
    @overload
    def get(self, key_id: str, /, default: TrustedKey | _T) -> TrustedKey | _T: ...
    def get(self, key_id: str, /, default: object = None) -> object:
        # Mapping.get goes through __getitem__ and a KeyError; asked once per signature.
        return self._keys.get(key_id, default)

    def __iter__(self):  # type: ignore[no-untyped-def] # Mapping's own signature
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TrustSet({sorted(self._keys)})"

    @property
    def digest(self) -> str:
        """Which keys, and which rotations: equal for two trust sets that judge alike."""
        keys = sorted(
            (k.key_id, k.raw.hex(), None if k.rotates_at is None else k.rotates_at.text)
            for k in self._keys.values()
        )
        return hashlib.sha256(repr(keys).encode()).hexdigest()

    def with_keys(self, keys: Iterable[TrustedKey]) -> TrustSet:
        """A new trust set with `keys` added (a key id already trusted keeps its key)."""
        return TrustSet([*self._keys.values(), *(k for k in keys if k.key_id not in self._keys)])


def _b64_bytes(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify_signature(raw_key: bytes, digest_hex: str, signature_b64: str) -> bool:
    """Whether `signature_b64` is an Ed25519 signature by `raw_key` over the raw digest bytes.

    The signed message is always the 32 raw bytes of a sha256 digest, never its hex
    text (pith-format.md §1). Malformed input is simply not a valid signature.
    """
    # Only texts of the one length that can be valid reach the cache, so what it holds
    # stays small however large the strings a hostile document puts there.
    if len(signature_b64) != _SIGNATURE_B64_LENGTH or len(digest_hex) != 64:
        return False
    return _verify_signature(raw_key, digest_hex, signature_b64)


#: A 64-byte Ed25519 signature in padded base64.
_SIGNATURE_B64_LENGTH = 88


def forget_verified() -> None:
    """Forget every signature checked so far (a benchmark checks each one for real)."""
    _verify_signature.cache_clear()


@lru_cache(maxsize=8192)
def _verify_signature(raw_key: bytes, digest_hex: str, signature_b64: str) -> bool:
    # A (key, digest, signature) triple verifies the same way every time, and the
    # registry signs the same digests again and again across mirrors and re-syncs.
    # Bounded (8192 triples of a few hundred bytes): a pass over N records must not
    # hold N records' signatures.
    try:
        digest = bytes.fromhex(digest_hex)
        signature = _signature_bytes(signature_b64)
    except (ValueError, binascii.Error):
        return False
    if len(digest) != 32 or len(signature) != 64:
        return False
    if len(raw_key) != 32:
        return False
    try:
        # What nacl's VerifyKey.verify does, without building a key object per call.
        nacl.bindings.crypto_sign_open(signature + digest, raw_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def _signature_bytes(text: str) -> bytes:
    """base64.b64decode(text, validate=True), sooner for the usual, canonical text.

    Strict mode accepts only alphabet characters with correct padding, a subset of what
    validate=True accepts, and decodes it to the same bytes; anything else is judged by
    the definition. (b64decode's validate runs a regular expression first.)
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(text, validate=True)
