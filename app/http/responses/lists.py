"""The OpenAI list shape every paged endpoint answers with."""

from __future__ import annotations

from typing import Any


def list_page(
    data: list[dict[str, Any]], *, has_more: bool, last_id: str | None = None
) -> dict[str, Any]:
    """``{"object": "list", "data", "first_id", "last_id", "has_more"}``; ``last_id``
    defaults to the last item's id (a filtered scan may have stopped further on)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": last_id if last_id is not None else (data[-1]["id"] if data else None),
        "has_more": has_more,
    }
