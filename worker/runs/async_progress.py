"""Where a run waiting on asynchronous upstreams stands, read from its job's record.

A run that calls an asynchronous upstream (BFL …) is carried by many short
deliveries of one arq job: each submits what has to be submitted, polls what was
submitted, and defers the job again. Nothing is kept in the worker between
deliveries; everything a delivery needs is in the calls of the job's current run and
claim (``Job.attempts``): a call ``in_flight`` with a handle is an edit the upstream
works on; a ``succeeded`` call with an ``output`` is a finished output; the failed
calls' ``next_action`` say how far routing went (which model, how many retries).

Pure functions, no I/O: ``progress_of`` (each output's state), ``resumes``
(whether a delivery carries a run on rather than claiming it), ``poll_delay`` (the
cadence) and ``attempt_deadline``.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.jobs import Attempt, Job, JobStatus
from app.core.providers_config import ProvidersConfig
from worker.runs.plan import RunPlan


@dataclass(frozen=True)
class OutputProgress:
    """One output of the run: ``done`` (its succeeded call), or ``pending`` (a call the
    upstream works on), or neither (a call must be made: model ``model_index`` of the
    output's plan, after ``retries_used`` retries of it). ``unrecorded`` are calls still
    ``in_flight`` with no handle: their worker died before the upstream's answer was
    recorded (the upstream may have taken the edit; it is submitted again)."""

    index: int
    done: Attempt | None = None
    pending: Attempt | None = None
    unrecorded: tuple[Attempt, ...] = ()
    model_index: int = 0
    retries_used: int = 0


def current_calls(job: Job) -> list[Attempt]:
    """The calls of the job's current run and claim, in the order they started."""
    return [c for c in job.attempts if c.run == job.run and c.attempt == job.attempt]


def progress_of(job: Job, outputs: int) -> list[OutputProgress]:
    """Each of the run's ``outputs`` as the job's record has it."""
    by_output: dict[int, list[Attempt]] = {index: [] for index in range(outputs)}
    for call in current_calls(job):
        by_output.setdefault(call.output_index, []).append(call)
    return [_progress(index, by_output[index]) for index in range(outputs)]


def _progress(index: int, calls: list[Attempt]) -> OutputProgress:
    model_index, retries_used = 0, 0
    for call in calls:
        if call.outcome == "succeeded" and call.output is not None:
            return OutputProgress(index, done=call)
        if call.next_action == "fallback":
            model_index, retries_used = model_index + 1, 0
        elif call.next_action == "retry":
            retries_used += 1
    in_flight = [call for call in calls if call.outcome == "in_flight"]
    pending = next((call for call in reversed(in_flight) if call.handle is not None), None)
    unrecorded = tuple(call for call in in_flight if call.handle is None)
    return OutputProgress(index, None, pending, unrecorded, model_index, retries_used)


def resumes(job: Job) -> bool:
    """Whether a delivery carries the job's run on under its current claim: the job is
    running and its claim made calls. (A new claim would mark the calls its upstreams
    work on lost.) A claim that made no call yet is taken over as any other."""
    return job.status == JobStatus.RUNNING and bool(current_calls(job))


def pending_calls(job: Job) -> list[Attempt]:
    """Calls of the current run and claim that an asynchronous upstream works on. (Once
    the job is no longer running, as when it was canceled, its record reads such calls
    as ``lost``: nobody would carry them on; they are still the upstream's work.)"""
    return [
        call
        for call in current_calls(job)
        if call.outcome in ("in_flight", "lost") and call.handle is not None
    ]


def is_async_run(plan: RunPlan, providers: ProvidersConfig) -> bool:
    """Whether any model the run may call is on an asynchronous upstream: such a run
    is carried by short deliveries (its synchronous fallbacks are called inline)."""
    return any(
        providers.upstream(providers.model(model).upstream).is_async
        for models in plan.models
        for model in models
    )


MIN_POLL_DELAY_S = 0.05
"""The shortest wait before a poll (a delivery that came late is not followed at once)."""


def poll_delay(age_s: float, initial_s: float, max_s: float) -> float:
    """Seconds until the next poll of an edit submitted ``age_s`` ago. Polls fall at
    fixed ages, the waits between them doubling from ``initial_s`` up to ``max_s``
    (0.5, 1.5, 3.5, 7.5, 12.5, 17.5 … s with 0.5 and 5), so no count of polls has to
    be kept; never less than ``MIN_POLL_DELAY_S``."""
    due, wait = initial_s, initial_s
    while due <= age_s:
        wait = min(wait * 2, max_s)
        if wait >= max_s:  # from here on every ``max_s``: skip the loop
            due += max_s * (1 + int((age_s - due) // max_s))
            break
        due += wait
    return max(MIN_POLL_DELAY_S, due - age_s)


def attempt_deadline(job: Job, budget_s: float, now: float) -> float:
    """Unix time at which the claim's budget runs out: ``budget_s`` after its first
    call started (``now`` plus the budget before any call)."""
    calls = current_calls(job)
    started = min((call.started_at for call in calls), default=now)
    return started + budget_s
