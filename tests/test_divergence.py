"""The divergence rules, one test each, on hand-made histories (pure: no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pithcrawl.divergence import RULES, Histories, Seen, conditions

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
