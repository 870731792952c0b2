"""The slot a run's fallback takes on an upstream it was not admitted to.

A run is admitted with slots on each output's first upstream only; a call that falls
back to a model elsewhere takes one slot there, named after the run's arq job, the
output and the upstream, so a later delivery of a run on asynchronous upstreams finds
it again (``held``) while the fallback's edit waits, and gives it back when that call
ends (``give_back``).
"""

from __future__ import annotations

from app.core.jobs import Job
from app.core.providers_config import UpstreamConfig
from worker.capacity.gate import SlotGrant, UpstreamGate
from worker.process.leases import Lease
from worker.runs.async_progress import pending_calls
from worker.runs.plan import RunPlan


def holder(arq_job_id: str, index: int, upstream: str) -> str:
    """Who holds the slot output ``index``'s fallback takes on ``upstream``."""
    return f"{arq_job_id}:out{index}:{upstream}"


def held(gate: UpstreamGate, plan: RunPlan, job: Job, arq_job_id: str) -> list[SlotGrant]:
    """The slots the run's pending fallback calls hold (taken again on each delivery,
    with the admitted ones)."""
    grants: list[SlotGrant] = []
    for call in pending_calls(job):
        if call.upstream != plan.upstreams[call.output_index]:
            name = holder(arq_job_id, call.output_index, call.upstream)
            grants.extend(gate.grants_for({call.upstream: 1}, name))
    return grants


async def take(gate: UpstreamGate, lease: Lease, index: int, upstream: UpstreamConfig) -> bool:
    """Take a slot on ``upstream`` for output ``index``, held with ``lease``; False when
    the upstream is full (nothing is queued: the fallback fails as not made)."""
    grants = await gate.admit(
        {upstream.name: (1, upstream.max_concurrency)},
        holder=holder(lease.arq_job_id, index, upstream.name),
        ticket="",
        ticket_score=0,
    )
    if grants is None:
        return False
    lease.slots.extend(grants)
    return True


async def give_back(gate: UpstreamGate, lease: Lease, index: int, upstream: UpstreamConfig) -> None:
    """Give back the slot output ``index``'s fallback holds on ``upstream``."""
    prefix = holder(lease.arq_job_id, index, upstream.name) + ":"
    for grant in [g for g in lease.slots if g.tokens and g.tokens[0].startswith(prefix)]:
        lease.slots.remove(grant)
        await gate.release(grant, upstream.max_concurrency)
