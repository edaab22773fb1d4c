"""Verification throughput against its floor: the bare Ed25519 checks of the same signatures.

    python bench/verify_bench.py [--bundles 2000] [--json out.json]

Builds N distinct bundles (2–6 events each, signed with a key made here), verifies
every one in-process with pithcrawl's verifier, then times nacl's verify alone on
exactly the signatures those bundles carry (receipt, each event, the bundle). Prints
bundles/s for both and the ratio; the target is at most 1.5.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from builder import BundleBuilder, TestSigner, canonical_record

from pithcrawl import keys
from pithcrawl.keys import TrustSet, load_key
from pithcrawl.timestamps import parse_timestamp
from pithcrawl.verify import verify_bundle


def corpus(n: int, signer: TestSigner, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        b = BundleBuilder(signer, record=canonical_record(f"2611.{i:05d}", title=f"Paper {i}"))
        for j in range(rng.randint(1, 5)):
            b.add_event(
                payload={
                    "graph_snapshot": {
                        "n": j,
                        "claims": {"count": rng.randint(0, 9)},
                        "paper": {"title": f"Paper {i}", "abstract_excerpt": "x" * 400},
                    }
                }
            )
        out.append(b.bytes())
    return out


def signatures(bundle: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    sigs = []
    for e in bundle["events"]:
        sigs.append(
            (bytes.fromhex(e["content_sha256"]), base64.b64decode(e["signature"]["signature_b64"]))
        )
        if e["event_type"] == "record_created":
            r = e["payload"]["receipt"]
            sigs.append(
                (bytes.fromhex(r["canonical_sha256"]), base64.b64decode(r["signature_b64"]))
            )
    bs = bundle["bundle_signature"]
    sigs.append((bytes.fromhex(bs["bundle_sha256"]), base64.b64decode(bs["signature_b64"])))
    return sigs


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundles", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="best of this many rounds")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    signer = TestSigner("bench-key")
    trust = TrustSet([load_key(signer.public_key())])
    now = parse_timestamp("2026-11-27T00:00:00Z").at  # type: ignore[union-attr]
    data = corpus(args.bundles, signer)
    sigs = [s for d in data for s in signatures(json.loads(d))]
    vk = nacl.signing.VerifyKey(signer.raw)

    def verify_all() -> float:
        keys.verify_signature.cache_clear()  # every signature is checked for real each round
        t0 = time.perf_counter()
        for d in data:
            report = verify_bundle(d, trust, now=now)
            assert report.ok and not report.findings, report.findings
        return time.perf_counter() - t0

    def floor_all() -> float:
        t0 = time.perf_counter()
        for digest, sig in sigs:
            vk.verify(digest, sig)
        return time.perf_counter() - t0

    # Best of several interleaved rounds, as timeit does: noise only ever adds time.
    verify_s = floor_s = float("inf")
    for _ in range(args.rounds):
        verify_s = min(verify_s, verify_all())
        floor_s = min(floor_s, floor_all())

    figures = {
        "bundles": len(data),
        "signatures": len(sigs),
        "mean_bundle_bytes": sum(map(len, data)) // len(data),
        "verify_bundles_per_s": round(len(data) / verify_s, 1),
        "floor_bundles_per_s": round(len(data) / floor_s, 1),
        "ratio_to_floor": round(verify_s / floor_s, 3),
    }
    print(f"{'bundles':<24}{figures['bundles']:>12}")
    print(f"{'signatures':<24}{figures['signatures']:>12}")
    print(f"{'mean bundle bytes':<24}{figures['mean_bundle_bytes']:>12}")
    print(f"{'verify bundles/s':<24}{figures['verify_bundles_per_s']:>12}")
    print(f"{'Ed25519 floor bundles/s':<24}{figures['floor_bundles_per_s']:>12}")
    print(f"{'ratio to floor':<24}{figures['ratio_to_floor']:>12}  (target <= 1.5)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
