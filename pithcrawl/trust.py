"""Loading the trust set from key files: the shipped registry key, or the operator's.

Owns where keys come from: the key files on disk, and the keys learned from rotations
kept in the archive. The rules about keys live in `keys`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from pathlib import Path

from pithcrawl.config import Config, read_bounded
from pithcrawl.errors import ConfigError, StoreError
from pithcrawl.keys import InvalidKey, TrustedKey, TrustSet, load_key
from pithcrawl.store import Store
from pithcrawl.verify import verify_archived

REGISTRY_KEY_FILE = "pith-v1-2026-05.key.json"
#: A key file holds one small JSON object (a few hundred bytes).
KEY_FILE_MAX = 64 * 1024

#: The setting naming the trust set the archive's verdicts were last reached under.
TRUST_DIGEST = "trust_digest"


def registry_key() -> TrustedKey:
    """The Pith registry's key `pith-v1-2026-05`, shipped in the package."""
    text = resources.files("pithcrawl").joinpath("data", REGISTRY_KEY_FILE).read_text("utf-8")
    return load_key(json.loads(text))


def load_key_file(path: Path) -> TrustedKey:
    try:
        doc = json.loads(read_bounded(path, "key file", KEY_FILE_MAX))
    except OSError as e:
        raise ConfigError(f"key file {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"key file {path}: not JSON ({e})") from None
    try:
        return load_key(doc)
    except InvalidKey as e:
        raise ConfigError(f"key file {path}: {e}") from None


def load_trust(paths: Iterable[Path] = ()) -> TrustSet:
    """The keys in `paths`, or the shipped registry key when there are none."""
    keys = [load_key_file(p) for p in paths]
    try:
        return TrustSet(keys or [registry_key()])
    except InvalidKey as e:
        raise ConfigError(str(e)) from None


async def with_learned(trust: TrustSet, store: Store, config: Config) -> TrustSet:
    """The configured trust set, plus keys learned from rotations when they are followed.

    A learned key counts only while the bundle that announced it still verifies under
    the configured keys and the learned keys accepted so far: a key does not outlive the
    key that vouched for it (one taken out of the configuration, say as compromised).
    """
    if not config.trust.follow_rotations:
        return trust
    pending: list[tuple[TrustedKey, str, datetime]] = []
    for doc, announced_in, learned_at in await store.learned_keys_with_vouchers():
        try:
            key = load_key(doc)
        except InvalidKey:
            continue
        if key.key_id not in trust:
            pending.append((key, announced_in, learned_at))
    accepted = trust
    progress = True
    while pending and progress:  # a learned key may vouch for one learned after it
        progress = False
        for item in list(pending):
            key, announced_in, learned_at = item
            try:
                body = await store.get_blob(announced_in)
            except StoreError:
                pending.remove(item)  # its evidence is gone: not trusted
                continue
            report = verify_archived(
                body, "bundle", accepted, fetched_at=learned_at, clock_skew=config.trust.clock_skew
            )
            if report.ok:
                accepted = accepted.with_keys([key])
                pending.remove(item)
                progress = True
    return accepted
