"""The ``exact_match`` cache: an identical request within the TTL reuses stored outputs.

Identical means the same tenant, model, prompt, output parameters and input bytes
(by SHA-256, computed at submission). Entries are per tenant, so one key's outputs
are never handed to another. A hit copies the cached outputs to the new job's own
keys server-side, so each job owns (and expires) its outputs.
"""

from __future__ import annotations

import hashlib
import json

from redis.asyncio import Redis

from app.core.jobs import JobOutcome, JobSpec
from app.store.keys import Keys

CACHED_FIELDS = (
    "model",
    "prompt",
    "n",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
)


def request_digest(spec: JobSpec) -> str | None:
    """The cache identity of a job's request, or None if an input has no hash."""
    images = [*spec.inputs.images, *([spec.inputs.mask] if spec.inputs.mask else [])]
    if any(image.sha256 is None for image in images):
        return None
    identity = {name: getattr(spec.request, name) for name in CACHED_FIELDS}
    identity["images"] = [image.sha256 for image in spec.inputs.images]
    identity["mask"] = spec.inputs.mask.sha256 if spec.inputs.mask else None
    encoded = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


class ResultCache:
    """Outcomes of succeeded jobs by tenant and request digest, each with its TTL."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def _key(self, tenant: str, digest: str) -> str:
        return self._keys.cache(tenant, digest)

    async def get(self, tenant: str, digest: str) -> JobOutcome | None:
        """The cached outcome, if one is still live."""
        raw = await self._redis.get(self._key(tenant, digest))
        return JobOutcome.model_validate_json(raw) if raw else None

    async def put(self, tenant: str, digest: str, outcome: JobOutcome, ttl_s: int) -> None:
        """Remember ``outcome`` for ``ttl_s`` seconds."""
        await self._redis.set(self._key(tenant, digest), outcome.model_dump_json(), ex=ttl_s)
