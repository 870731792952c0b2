"""The Lua scripts editq runs in Redis, one file per job: the stores' and dispatch's in
``app/store/lua/``, the worker's shared gate's in ``worker/capacity/lua/``.

Each file's header names its KEYS and ARGV; every key a script touches is handed
to it in KEYS (built by ``app.store.keys``), never assembled inside Lua. Scripts
that report on a transition (batch progress, webhook events, the batch window)
run in the same MULTI right after ``move_job.lua`` and act only when the job's
``tx`` field carries the token of that very transition.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


@cache
def source(name: str, package: str = "app.store") -> str:
    """The text of script ``name`` (``<package>/lua/<name>.lua``); KeyError if none."""
    path = resources.files(package).joinpath("lua", f"{name}.lua")
    if not path.is_file():
        raise KeyError(f"no Lua script {name!r} in {package}")
    return path.read_text()


def register(redis: Redis, name: str, package: str = "app.store") -> AsyncScript:
    """Script ``name`` registered on ``redis`` (run with EVALSHA, loaded on demand)."""
    return redis.register_script(source(name, package))
