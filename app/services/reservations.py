"""What a submit reserves before it writes: the id of the job or batch it creates.

A submit with an ``Idempotency-Key`` holds the key while it runs. Before writing
anything it reserves the id it is about to create; if its process dies, the retry
that takes the key over is handed that id (``resumed``) and finishes or returns that
job or batch, so a crash at any step never makes (or pays for) a second one.
"""

from __future__ import annotations

from typing import Protocol


class Reservation(Protocol):
    """The submit's hold on its idempotency key."""

    @property
    def resumed(self) -> str | None:
        """The id an earlier request with this key reserved before it died, or None."""
        ...

    async def reserve(self, resource_id: str) -> None:
        """Record ``resource_id`` as what this request creates, before anything is
        written; raises ``IdempotencyKeyInUse`` if another request has taken the key."""
        ...
