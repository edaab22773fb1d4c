"""The alert book and its deliveries on a real SQLite archive (store/alerts.py,
store/deliveries.py): each rule a mutation audit found no test holding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import NOW, REAL_SUFFIX
from test_alerts import down
from test_store import failed, mirror

from pithcrawl.store import NewEvent, Store

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def cond(key: str, suffix: str | None = None) -> NewEvent:
    return NewEvent(
        kind="mirror_stale",
        severity="error",
        at=T0,
        pith_number=None if suffix is None else f"pith:2026:{suffix}",
        mirrors=("m",),
        summary=f"{key} holds",
        evidence={"key": key},
        dedup_key=key,
        suffix=suffix,
    )


async def test_one_condition_reported_under_two_scopes_is_one_alert(tmp_path):
    """The second scope opens nothing (the key is open already), and raises nothing."""
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        (first,) = (await book.reconcile("reach:m", [down(T0)], now=T0, sinks=["hook"])).opened
        again = await book.reconcile(
            "other:m", [down(T0)], now=T0 + HOUR, sinks=["hook", "webhook"]
        )
        assert again.opened == [] and again.still_open is False
        assert [(d.alert_id, d.sink, d.phase) for d in await store.deliveries.rows()] == [
            (first.id, "hook", "open")
        ]
        assert [a.id for a in await book.open_alerts()] == [first.id]


async def test_still_open_says_whether_the_scope_keeps_an_open_alert(tmp_path):
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        assert (await book.reconcile("reach:m", [], now=T0)).still_open is False
        opened = await book.reconcile("reach:m", [down(T0)], now=T0)
        assert opened.still_open is True
        assert opened.opened[0].firing is True
        kept = await book.reconcile("reach:m", [down(T0)], now=T0 + HOUR)
        assert (kept.opened, kept.still_open) == ([], True)
        closed = await book.reconcile("reach:m", [], now=T0 + 2 * HOUR)  # no hold-down
        assert ([a.id for a in closed.closed], closed.still_open) == (
            [opened.opened[0].id],
            False,
        )
        stored = await book.get(opened.opened[0].id)
        assert stored is not None and stored.cleared_at is None and not stored.open
        assert not stored.firing


async def test_a_held_alert_closes_when_its_scope_is_checked_after_the_hold_down(tmp_path):
    hold = timedelta(minutes=30)
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        (alert,) = (await book.reconcile("reach:m", [down(T0)], now=T0, hold=hold)).opened
        held = await book.reconcile("reach:m", [], now=T0 + timedelta(minutes=1), hold=hold)
        assert (held.closed, held.still_open) == ([], True)
        stored = await book.get(alert.id)
        assert stored is not None and stored.open and not stored.firing
        later = await book.reconcile("reach:m", [], now=T0 + timedelta(minutes=31), hold=hold)
        assert [a.id for a in later.closed] == [alert.id]


async def test_closing_one_alert_queues_a_notice_for_that_alert_only(tmp_path):
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        (a,) = (await book.reconcile("s:a", [cond("a")], now=T0, sinks=["hook"])).opened
        (b,) = (await book.reconcile("s:b", [cond("b")], now=T0, sinks=["hook"])).opened
        await book.reconcile("s:a", [], now=T0 + HOUR, sinks=["hook"])
        assert [(d.sink, d.phase) for d in await store.deliveries.rows(a.id)] == [
            ("hook", "open"),
            ("hook", "close"),
        ]
        assert [(d.sink, d.phase) for d in await store.deliveries.rows(b.id)] == [("hook", "open")]


async def test_the_default_sinks_are_hook_and_webhook(tmp_path):
    """`status` counts undelivered notices of every sink (no sinks given)."""
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        await book.reconcile("reach:m", [down(T0)], now=T0, sinks=["hook", "webhook"])
        assert await store.deliveries.undelivered_count() == 2
        due = await store.deliveries.due_deliveries(T0)
        assert sorted(d.sink for d, _ in due) == ["hook", "webhook"]


async def test_queueing_for_no_sink_queues_nothing(tmp_path):
    async with await Store.open(tmp_path / "a.db") as store:
        await store.alerts.reconcile("reach:m", [down(T0)], now=T0)
        assert await store.deliveries.queue_open([], T0) == 0


async def test_open_counts_by_default_count_untracked_records_too(tmp_path):
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        await book.reconcile("s:x", [cond("x", suffix="X" * 26)], now=T0)
        assert await book.open_counts("kind") == {"mirror_stale": 1}
        assert await book.open_counts("kind", tracked=True) == {}


async def test_open_counts_refuses_another_column(tmp_path):
    async with await Store.open(tmp_path / "a.db") as store:
        with pytest.raises(ValueError, match="cannot count"):
            await store.alerts.open_counts("summary")  # type: ignore[arg-type]


async def test_an_alert_as_json_is_the_contracts_object(tmp_path):
    hold = timedelta(minutes=30)
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        (alert,) = (await book.reconcile("reach:m", [down(T0)], now=T0, hold=hold)).opened
        await book.reconcile("reach:m", [], now=T0 + HOUR / 2, hold=hold)
        held = await book.get(alert.id)
        assert held is not None
        assert held.to_json() == {
            "id": alert.id,
            "kind": "mirror_unreachable",
            "severity": "error",
            "at": "2026-11-01T00:00:00.000000Z",
            "pith_number": None,
            "mirrors": ["m"],
            "summary": "m is down",
            "evidence": {"mirror": "m"},
            "dedup_key": "mirror_unreachable:m",
            "status": "open",
            "closed_at": None,
            "cleared_at": "2026-11-01T00:30:00.000000Z",
            "recurrences": 0,
        }
        (closed,) = await book.close_cleared(T0 + 2 * HOUR, hold)
        assert closed.to_json()["status"] == "closed"
        assert closed.to_json()["closed_at"] == "2026-11-01T02:00:00.000000Z"


async def test_failing_lists_each_failing_record_with_its_first_failure(tmp_path):
    async with await Store.open(tmp_path / "a.db", exclusive=True) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
        await store.watchlist.upsert_mirror(mirror("main"))
        await store.record_fetch(failed(0, "timeout"))
        await store.record_fetch(failed(5, "refused"))
        count, examples = await store.alerts.failing("main", NOW + timedelta(minutes=10))
        assert count == 1
        assert examples == [
            {
                "suffix": REAL_SUFFIX,
                "failing_since": examples[0]["failing_since"],
                "last_error": "refused",
            }
        ]
        assert datetime.fromisoformat(examples[0]["failing_since"]) == NOW


async def test_the_closing_entry_names_its_alert_and_an_early_entry_its_first_alert(tmp_path):
    """A condition stamped before its alert opened (reported at T0, reconciled an hour
    later) belongs to that alert; the alert_closed entry's evidence names alert, kind, key."""
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        (alert,) = (await book.reconcile("reach:m", [down(T0)], now=T0 + HOUR)).opened
        await book.reconcile("reach:m", [], now=T0 + 2 * HOUR)
        entries = await store.events()
        assert [e.kind for e in entries] == ["mirror_unreachable", "alert_closed"]
        assert entries[1].evidence == {
            "alert_id": alert.id,
            "kind": "mirror_unreachable",
            "dedup_key": "mirror_unreachable:m",
        }
        found = await book.of_entries(entries)
        assert {i: a.id for i, a in found.items()} == {e.id: alert.id for e in entries}


async def test_failing_counts_a_record_failing_since_exactly_then_and_lists_ten(tmp_path):
    from dataclasses import replace

    suffixes = [REAL_SUFFIX] + [chr(ord("A") + i) * 26 for i in range(10)]
    async with await Store.open(tmp_path / "a.db", exclusive=True) as store:
        await store.watchlist.track(suffixes, NOW)
        await store.watchlist.upsert_mirror(mirror("main"))
        for s in suffixes:
            await store.record_fetch(replace(failed(0), suffix=s))
        count, examples = await store.alerts.failing("main", NOW)  # failing since NOW exactly
        assert (count, len(examples)) == (11, 10)


async def test_open_alerts_newest_first_with_their_filters(tmp_path):
    async with await Store.open(tmp_path / "a.db", exclusive=True) as store:
        await store.watchlist.track([REAL_SUFFIX], NOW)
        book = store.alerts
        (m,) = (await book.reconcile("reach:m", [down(T0)], now=T0)).opened  # no record
        (x,) = (await book.reconcile("s:x", [cond("x", "X" * 26)], now=T0 + HOUR)).opened
        (y,) = (await book.reconcile("s:y", [cond("y", "Y" * 26)], now=T0 + HOUR)).opened
        (t,) = (await book.reconcile("s:t", [cond("t", REAL_SUFFIX)], now=T0)).opened
        assert [a.id for a in await book.open_alerts()] == [y.id, x.id, t.id, m.id]
        assert [a.id for a in await book.open_alerts(suffixes=[])] == [m.id]
        assert [a.id for a in await book.open_alerts(suffixes=["X" * 26], tracked=True)] == [m.id]
        assert [a.id for a in await book.open_alerts(tracked=True)] == [t.id, m.id]


async def test_a_delivery_due_now_is_due_and_attempts_are_counted(tmp_path):
    async with await Store.open(tmp_path / "a.db") as store:
        book = store.alerts
        await book.reconcile("reach:m", [down(T0)], now=T0, sinks=["hook", "webhook"])
        due = await store.deliveries.due_deliveries(T0, sinks=["hook"])
        assert [(d.sink, d.phase) for d, _ in due] == [("hook", "open")]
        await store.deliveries.delivered(due[0][0], T0)
        (webhook,) = [d for d, _ in await store.deliveries.due_deliveries(T0, sinks=["webhook"])]
        await store.deliveries.failed(webhook, "x" * 2000, T0 + HOUR)
        by_sink = {d.sink: d for d in await store.deliveries.rows()}
        assert by_sink["hook"].attempts == 1 and by_sink["hook"].delivered_at == T0
        assert by_sink["webhook"].attempts == 1
        assert by_sink["webhook"].last_error == "x" * 1000
