"""Fixtures every adapter test shares."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The client session an adapter sends with, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client
