"""An entry of the event log as the rules make it: what happened, to be archived.

Owns `NewEvent`, the value every rule that finds something returns (an alert's condition,
a correction, a key rotation, a rollback) and the archive takes (`store`). Pure: it is a
value, made by the pure rules (`judge`) and written by the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event-log row to insert (an alert, a correction, a key rotation, …)."""

    kind: str
    severity: str
    at: datetime
    pith_number: str | None
    mirrors: tuple[str, ...]
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    dedup_key: str | None = None
    suffix: str | None = None
    """Defaults to the outcome's suffix inside `record_fetch`."""
