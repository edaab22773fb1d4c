"""The divergence rules, one test each, on hand-made histories (pure: no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from pithcrawl.divergence import RULES, Histories, Seen, View, conditions

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def seen(mirror: str, events: str, at: datetime = T0, claims=()) -> Seen:
    return Seen(
        mirror,
        at,
        f"sha-{mirror}-{events}",
        f"https://{mirror}/b",
        "2026-11-01T00:00:00Z",
        tuple(events),
        tuple(claims),
    )


def h(current: list[Seen], archived: list[Seen] | None = None) -> Histories:
    return Histories("pith:2026:X", {s.mirror: s for s in current}, archived or current)


def kinds(hist: Histories, now: datetime = T0, stale: timedelta = 2 * DAY) -> list[str]:
    return [c.kind for c in conditions(hist, now, stale)]


def test_the_rules_are_the_contract_kinds():
    assert [(k, s) for k, s, _ in RULES] == [
        ("mirror_divergence", "critical"),
        ("mirror_stale", "error"),
        ("equivocation", "critical"),
        ("vantage_split", "critical"),
    ]


def test_identical_histories_are_consistent():
    assert kinds(h([seen("a", "rx"), seen("b", "rx")])) == []


def test_split_view_now_names_both_mirrors():
    (c,) = conditions(h([seen("a", "rx"), seen("b", "ry")]), T0, 2 * DAY)
    assert c.kind == "mirror_divergence"
    assert c.mirrors == ("a", "b")
    assert c.evidence["only_in"] == {"a": ["x"], "b": ["y"]}
    assert c.dedup_key == "mirror_divergence:pith:2026:X:a:b"


def test_split_view_against_an_archived_history():
    """b now agrees with a, but b once served a history a does not contain."""
    now = [seen("a", "rx"), seen("b", "rx")]
    assert kinds(h(now, [*now, seen("b", "ry", T0 - DAY)])) == ["mirror_divergence"]


def test_a_mirror_behind_is_not_divergent_before_stale_after():
    hist = h([seen("a", "rxy", T0), seen("b", "rx")])
    assert kinds(hist, now=T0 + DAY) == []


def test_a_mirror_behind_for_longer_than_stale_after_is_stale():
    hist = h([seen("a", "rxy", T0), seen("b", "rx")])
    (c,) = conditions(hist, T0 + 3 * DAY, 2 * DAY)
    assert (c.kind, c.mirrors) == ("mirror_stale", ("b",))
    assert c.evidence["missing_event_ids"] == ["y"]
    assert c.evidence["behind_since"] == "2026-11-01T00:00:00.000000Z"


def test_stale_counts_from_the_first_time_the_newer_history_was_seen():
    hist = h(
        [seen("a", "rxy", T0 + DAY), seen("b", "rx")],
        [seen("a", "rxy", T0 + DAY), seen("c", "rxy", T0), seen("b", "rx")],
    )
    assert kinds(hist, now=T0 + 2 * DAY + timedelta(hours=1)) == ["mirror_stale"]


def test_equivocation_across_mirrors():
    a = seen("a", "rx", claims=[("prev_event", "r", "x")])
    b = seen("b", "ry", claims=[("prev_event", "r", "y")])
    found = {c.kind: c for c in conditions(h([a, b]), T0, 2 * DAY)}
    assert set(found) == {"mirror_divergence", "equivocation"}
    assert found["equivocation"].evidence["event_ids"] == ["x", "y"]
    assert found["equivocation"].evidence["place"] == {"kind": "prev_event", "ref": "r"}


def test_equivocation_through_supersedes_in_one_mirror_over_time():
    first = seen("a", "rx", T0, claims=[("supersedes", "r", "x")])
    later = seen("a", "rxy", T0 + DAY, claims=[("supersedes", "r", "x"), ("supersedes", "r", "y")])
    assert "equivocation" in kinds(h([later], [first, later]))


def test_the_same_event_seen_twice_is_not_an_equivocation():
    a = seen("a", "rx", claims=[("prev_event", "r", "x")])
    b = seen("b", "rx", claims=[("prev_event", "r", "x")])
    assert kinds(h([a, b])) == []


def test_a_fork_is_not_a_lag_whatever_the_lengths():
    """b forked with fewer events than a: a divergence, never `mirror_stale` (lagging
    means lacking events of a history that contains yours, not having fewer)."""
    hist = h([seen("a", "rxy", T0), seen("b", "rz")])
    assert kinds(hist, now=T0 + 3 * DAY) == ["mirror_divergence"]


def test_a_lag_that_grows_is_the_same_stale_condition():
    """The stale condition's key names the record and the mirror only: one more event
    behind is the same alert, not a close, a reopen and a second page."""
    one = conditions(h([seen("a", "rxy", T0), seen("b", "rx")]), T0 + 3 * DAY, 2 * DAY)
    two = conditions(h([seen("a", "rxyz", T0), seen("b", "rx")]), T0 + 3 * DAY, 2 * DAY)
    assert (
        [c.dedup_key for c in one] == [c.dedup_key for c in two] == ["mirror_stale:pith:2026:X:b"]
    )


# -- vantage_split: one mirror, two vantages ----------------------------------------------

HOUR = timedelta(hours=1)


def at(vantage: str, events: str, fetched: datetime, built: str = "2026-11-01T00:00:00Z") -> Seen:
    return Seen(
        "m",
        fetched,
        f"sha-{vantage}-{events}-{built}",
        "https://m/b",
        built,
        tuple(events),
        vantage=vantage,
        node=f"node-{vantage}",
    )


def split(views: list[View], archived: list[Seen], grace: timedelta = 6 * HOUR) -> list:
    hist = Histories("pith:2026:X", {"m": views[-1].seen}, archived, views)
    return [
        c for c in conditions(hist, T0 + 10 * DAY, 100 * DAY, grace) if c.kind == "vantage_split"
    ]


def test_a_vantage_served_an_older_bundle_past_the_grace_is_a_split():
    ahead, behind = at("eu", "rxy", T0), at("us", "rx", T0 - DAY)
    (c,) = split(
        [View(ahead, T0), View(behind, T0 + 6 * HOUR + timedelta(seconds=1))], [behind, ahead]
    )
    assert (c.kind, c.severity, c.mirrors) == ("vantage_split", "critical", ("m",))
    assert c.dedup_key == "vantage_split:pith:2026:X:m"
    first, second = c.evidence["documents"]
    assert (first["vantage"], first["node"], second["vantage"]) == ("eu", "node-eu", "us")
    assert c.evidence["missing_event_ids"] == ["y"]
    assert c.evidence["ahead_since"] == "2026-11-01T00:00:00.000000Z"


def test_within_the_grace_a_vantage_behind_is_a_lagging_cache():
    ahead, behind = at("eu", "rxy", T0), at("us", "rx", T0 - DAY)
    assert split([View(ahead, T0), View(behind, T0 + 6 * HOUR)], [behind, ahead]) == []


def test_the_grace_counts_from_the_first_newer_bundle_the_vantage_ahead_was_served():
    behind = at("us", "rx", T0 - DAY)
    first, later = at("ap", "rxy", T0), at("ap", "rxyz", T0 + 5 * HOUR)
    gone = at("eu", "rxy", T0 - HOUR)  # eu no longer serves anything newer: not counted
    views = [View(later, T0 + 5 * HOUR), View(behind, T0 + 7 * HOUR)]
    (c,) = split(views, [behind, gone, first, later])
    assert c.evidence["documents"][0]["fetched_at"] == "2026-11-01T00:00:00.000000Z"
    assert c.evidence["documents"][0]["vantage"] == "ap"


def test_a_vantage_ahead_only_before_the_other_was_served_its_bundle_is_no_split():
    """eu was served v2, then the mirror went back to v1 for everyone: us was served v1
    after eu's last confirmation of v2, so they were never served both at once."""
    ahead = at("eu", "rxy", T0)
    behind = at("us", "rx", T0 + HOUR)
    views = [View(ahead, T0 + HOUR - timedelta(seconds=1)), View(behind, T0 + DAY)]
    assert split(views, [ahead, behind], grace=timedelta(0)) == []


def test_a_vantage_that_stopped_confirming_is_not_behind():
    """Its last confirmation came before the newer bundle was first served elsewhere."""
    ahead, behind = at("eu", "rxy", T0), at("us", "rx", T0 - DAY)
    assert split([View(ahead, T0 + 9 * DAY), View(behind, T0 - HOUR)], [behind, ahead]) == []


def test_the_same_events_rebuilt_later_are_newer():
    ahead = at("eu", "rx", T0, built="2026-11-02T00:00:00Z")
    behind = at("us", "rx", T0 - DAY, built="2026-11-01T00:00:00Z")
    (c,) = split([View(ahead, T0), View(behind, T0 + DAY)], [behind, ahead])
    assert c.evidence["documents"][1]["vantage"] == "us"  # the older build is the one behind
    assert c.evidence["missing_event_ids"] == []


def test_two_forks_are_not_a_split_but_equivocation_s():
    a, b = at("eu", "rxy", T0), at("us", "rxz", T0)
    assert split([View(a, T0 + DAY), View(b, T0 + DAY)], [a, b], grace=timedelta(0)) == []


def test_snapshots_from_before_vantages_are_not_a_vantage_ahead():
    old = Seen("m", T0, "sha-old", "https://m/b", "2026-11-01T00:00:00Z", tuple("rxy"))
    behind = at("us", "rx", T0 - DAY)
    assert split([View(behind, T0 + DAY)], [behind, old], grace=timedelta(0)) == []


def test_a_mirror_is_one_split_however_many_vantages_are_behind():
    ahead = at("eu", "rxy", T0)
    us, ap = at("us", "rx", T0 - DAY), at("ap", "rx", T0 - DAY)
    views = [View(ahead, T0), View(us, T0 + DAY), View(ap, T0 + DAY)]
    assert len(split(views, [us, ap, ahead])) == 1


def test_new_bytes_of_the_same_old_bundle_do_not_restart_the_split():
    """The mirror serves the vantage behind its old bundle in new bytes on every fetch
    (a trailing newline more): still behind since it was first served that history."""
    ahead = at("eu", "rxy", T0)
    first_bytes = at("us", "rx", T0 - DAY)
    new_bytes = replace(at("us", "rx", T0 + 2 * DAY), body_sha256="sha-us-rx-again")
    views = [View(ahead, T0 + DAY), View(new_bytes, T0 + 2 * DAY)]
    (c,) = split(views, [first_bytes, ahead, new_bytes])
    assert c.evidence["behind_since"] == "2026-10-31T00:00:00.000000Z"


def test_a_vantage_served_something_newer_before_is_its_rollback_not_a_split():
    """us was served v2, then (a brief rollback for everyone) v1; eu was served v2 all
    along. That is us's `rollback`, judged on its own series."""
    eu = at("eu", "rxy", T0 - DAY)
    us_then, us_now = at("us", "rxy", T0 - DAY), at("us", "rx", T0)
    views = [View(eu, T0 + DAY), View(us_now, T0 + DAY)]  # a day of it, both at once
    assert split(views, [eu, us_then, us_now], grace=timedelta(0)) == []


def test_a_vantage_that_has_not_reached_a_mirror_since_tells_nothing_of_its_lag():
    """us last reached m1 before m0 was first served the newer history: m1 is not stale
    by us's view (m1 is unreachable from there, which is `mirror_unreachable`'s)."""
    m0 = replace(at("eu", "rxy", T0), mirror="m0")
    m1_eu = replace(at("eu", "rxy", T0), mirror="m1")
    m1_us = replace(at("us", "rx", T0 - 2 * DAY), mirror="m1")
    views = [View(m0, T0 + 9 * DAY), View(m1_eu, T0 + 9 * DAY), View(m1_us, T0 - HOUR)]
    hist = Histories("pith:2026:X", {"m0": m0, "m1": m1_eu}, [m1_us, m0, m1_eu], views)
    assert [c.kind for c in conditions(hist, T0 + 10 * DAY, 2 * DAY)] == []
    # Confirmed since (it does reach m1, and is served the older history): stale.
    views[2] = View(m1_us, T0 + 9 * DAY)
    hist = Histories("pith:2026:X", {"m0": m0, "m1": m1_eu}, [m1_us, m0, m1_eu], views)
    assert "mirror_stale" in [c.kind for c in conditions(hist, T0 + 10 * DAY, 2 * DAY)]
