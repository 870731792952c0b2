"""Every Redis key editq writes, built in this one place from the key prefix ``P``.

Jobs and batches::

    P:job:{id}                    hash: the job record (``app.store.jobs``)
    P:job:{id}:log                stream: the job's creation, transitions and partial images
    P:job:{id}:wh-events          list: the job's webhook event ids, oldest first
    P:job:{id}:deliveries         list: the job's webhook delivery attempts (JSON)
    P:tenant:{tenant}:jobs        sorted set (all score 0, lexical = creation order)
    P:batch:{id}                  hash: the batch record and its counts (``app.store.batches``)
    P:batch:{id}:jobs             list: the variants' job ids, in variant order
    P:batch:{id}:pending          list: arq ids of variants not yet released to the queue
    P:batch:{id}:log              stream: the batch's status and counts after every change
    P:batch:{id}:wh-events, P:batch:{id}:deliveries   as for a job
    P:tenant:{tenant}:batches     sorted set, like the tenant's jobs
    P:bulk:clock                  the bulk lane's fair-share virtual clock
    P:retention                   sorted set: job and batch ids by record expiry (ms)

Files::

    P:file:{id}                   hash: one uploaded file's record (``app.store.files``)
    P:tenant:{tenant}:files       sorted set, like the tenant's jobs
    P:tenant:{tenant}:blob:{sha}  set: the tenant's file ids whose bytes have this SHA-256
    P:files:expiry                sorted set: ids of files with an expiry, by it (ms)
    P:events                      pub/sub channel: one message per transition

Webhooks, idempotency, limits and the cache::

    P:wh:event:{event id}         hash: one webhook event (``app.store.webhooks``)
    P:wh:outbox                   sorted set: pending event ids by due time (ms)
    P:wh:secret:{tenant}          the tenant's signing secret, when not derived from a root
    P:wh:rotation:{tenant}        hash: the tenant's secret rotations (``app.store.webhooks``)
    P:wh:gone:{tenant}:{sha}      a receiver URL that answered 410 Gone
    P:idem:{tenant}:{sha256(key)} hash: one Idempotency-Key record
    P:synccall:{tenant}:{fp}      the job of a synchronous edit, by its request fingerprint
    P:ratelimit:{tenant}          the tenant's request count in the current minute
    P:authfail:{sha(address)}     failed authentications from one client address
    P:stream:secret               the secret stream URLs are signed with (hex)
    P:cache:{tenant}:{digest}     an exact-match cache entry (a job outcome, JSON)
    P:upstream:{name}:slots       sorted set: slot tokens by lease expiry (ms)
    P:upstream:{name}:waiting     sorted set: waiting tickets by rank
    P:upstream:{name}:cooldown    the time (ms) a 429 asked every worker to wait until
    P:upstream:{name}:rate        the GCRA reservation time (ms) of requests_per_minute
    P:janitor:lock                held by the one worker sweeping expired S3 objects

arq's own keys (queues, job payloads, in-progress markers) are ``app.dispatch``'s.
A job's or batch's keys are chosen by its id (``app.core.jobs.names_a_batch``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.core.jobs import names_a_batch


@dataclass(frozen=True)
class Keys:
    """The key layout under one prefix (``EDITQ_KEY_PREFIX``)."""

    prefix: str

    # -- jobs and batches -------------------------------------------------------------

    def job(self, job_id: str) -> str:
        """The job's record (a hash)."""
        return f"{self.prefix}:job:{job_id}"

    def batch(self, batch_id: str) -> str:
        """The batch's record (a hash)."""
        return f"{self.prefix}:batch:{batch_id}"

    def subject(self, subject_id: str) -> str:
        """The record of a job or a batch, by its id."""
        if names_a_batch(subject_id):
            return self.batch(subject_id)
        return self.job(subject_id)

    def log(self, subject_id: str) -> str:
        """The transition log (a stream) of a job or a batch."""
        return f"{self.subject(subject_id)}:log"

    def webhook_events(self, subject_id: str) -> str:
        """The webhook event ids (a list) of a job or a batch."""
        return f"{self.subject(subject_id)}:wh-events"

    def deliveries(self, subject_id: str) -> str:
        """The webhook delivery attempts (a list) of a job's or a batch's events."""
        return f"{self.subject(subject_id)}:deliveries"

    def tenant_jobs(self, tenant: str) -> str:
        """The tenant's job ids (a sorted set, lexical order)."""
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_batches(self, tenant: str) -> str:
        """The tenant's batch ids (a sorted set, lexical order)."""
        return f"{self.prefix}:tenant:{tenant}:batches"

    def batch_jobs(self, batch_id: str) -> str:
        """The variants' job ids in variant order (a list)."""
        return f"{self.batch(batch_id)}:jobs"

    def batch_pending(self, batch_id: str) -> str:
        """The arq ids of variants not yet released to the bulk queue (a list)."""
        return f"{self.batch(batch_id)}:pending"

    def batch_creator(self, batch_id: str) -> str:
        """The token of the request creating the batch (a string with the lease's TTL)."""
        return f"{self.batch(batch_id)}:creator"

    @property
    def batches_being_created(self) -> str:
        """Ids of batches not fully written yet, by when their creation began (ms; a
        sorted set the stale-creation sweeper reads)."""
        return f"{self.prefix}:batches:creating"

    @property
    def bulk_clock(self) -> str:
        """The bulk lane's fair-share virtual clock."""
        return f"{self.prefix}:bulk:clock"

    @property
    def retention(self) -> str:
        """Job and batch ids by the time (ms) their records expire (a sorted set)."""
        return f"{self.prefix}:retention"

    @property
    def events_channel(self) -> str:
        """The pub/sub channel every transition is published on."""
        return f"{self.prefix}:events"

    @property
    def stream_secret(self) -> str:
        """The random secret every API process signs stream URLs with."""
        return f"{self.prefix}:stream:secret"

    # -- files ------------------------------------------------------------------------

    def file(self, file_id: str) -> str:
        """An uploaded file's record (a hash)."""
        return f"{self.prefix}:file:{file_id}"

    def tenant_files(self, tenant: str) -> str:
        """The tenant's file ids (a sorted set, lexical = creation order)."""
        return f"{self.prefix}:tenant:{tenant}:files"

    def file_blob_users(self, tenant: str, sha256: str) -> str:
        """The tenant's file ids stored as the object with this SHA-256 (a set): the
        object is deleted when the last of them goes."""
        return f"{self.prefix}:tenant:{tenant}:blob:{sha256}"

    @property
    def files_expiry(self) -> str:
        """Ids of files that expire, by when (ms; a sorted set the janitor reads)."""
        return f"{self.prefix}:files:expiry"

    # -- webhooks ---------------------------------------------------------------------

    def webhook_event(self, event_id: str) -> str:
        """One webhook event (a hash)."""
        return f"{self.prefix}:wh:event:{event_id}"

    @property
    def webhook_outbox(self) -> str:
        """Pending webhook event ids by due time in ms (a sorted set)."""
        return f"{self.prefix}:wh:outbox"

    def webhook_secret(self, tenant: str) -> str:
        """The tenant's generated webhook signing secret."""
        return f"{self.prefix}:wh:secret:{tenant}"

    def webhook_rotation(self, tenant: str) -> str:
        """The tenant's signing secret rotations (a hash)."""
        return f"{self.prefix}:wh:rotation:{tenant}"

    def webhook_gone(self, tenant: str, url: str) -> str:
        """Marks a receiver URL of the tenant that answered 410 Gone."""
        return f"{self.prefix}:wh:gone:{tenant}:{_digest(url)[:32]}"

    # -- requests ---------------------------------------------------------------------

    def idempotency(self, tenant: str, key: str) -> str:
        """The record of one ``Idempotency-Key`` of the tenant (a hash)."""
        return f"{self.prefix}:idem:{tenant}:{_digest(key)}"

    def sync_call(self, tenant: str, fingerprint: str) -> str:
        """The job a synchronous edit without an ``Idempotency-Key`` accepted, by the
        request's fingerprint (a hex SHA-256), for the client's retries to find."""
        return f"{self.prefix}:synccall:{tenant}:{fingerprint}"

    def rate_limit(self, tenant: str) -> str:
        """The tenant's request count in the current window."""
        return f"{self.prefix}:ratelimit:{tenant}"

    def auth_failures(self, address: str) -> str:
        """Failed authentications from one client address in the current window."""
        return f"{self.prefix}:authfail:{_digest(address)[:32]}"

    def cache(self, tenant: str, digest: str) -> str:
        """An exact-match cache entry of the tenant."""
        return f"{self.prefix}:cache:{tenant}:{digest}"

    # -- upstream capacity ------------------------------------------------------------

    def upstream_slots(self, upstream: str) -> str:
        """The upstream's slot tokens by lease expiry in ms (a sorted set)."""
        return f"{self.prefix}:upstream:{upstream}:slots"

    def upstream_waiting(self, upstream: str) -> str:
        """Tickets of jobs waiting for a slot of the upstream, by rank (a sorted set)."""
        return f"{self.prefix}:upstream:{upstream}:waiting"

    def upstream_cooldown(self, upstream: str) -> str:
        """Until when (ms) every worker holds calls to the upstream after a 429."""
        return f"{self.prefix}:upstream:{upstream}:cooldown"

    def upstream_rate(self, upstream: str) -> str:
        """The upstream's request-rate reservation time (ms)."""
        return f"{self.prefix}:upstream:{upstream}:rate"

    # -- housekeeping -----------------------------------------------------------------

    @property
    def janitor_lock(self) -> str:
        """Held by the worker that sweeps expired S3 objects."""
        return f"{self.prefix}:janitor:lock"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
