"""The per-request routing knobs of orq's router: retry, fallbacks, cache, load balancer, timeout.

They may come at the top level of a request or nested in an ``orq`` object; both
are merged into one ``RoutingOptions`` (top level wins). Ranges are the seed's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_FALLBACK_CODES = (408, 429, 500, 502, 503, 504, 529)

HttpStatus = Annotated[int, Field(ge=100, le=599)]
MAX_CALL_TIMEOUT_MS = 300_000


class RetryOptions(BaseModel):
    """Retry the same model on these upstream statuses (and on connection errors)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    count: int = Field(3, ge=1, le=5)
    on_codes: tuple[HttpStatus, ...] = Field((429,), min_length=1)


class FallbackModel(BaseModel):
    """A model to try when the current one is exhausted."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str = Field(min_length=1)


class CacheOptions(BaseModel):
    """Answer an identical request from stored outputs within ``ttl`` seconds."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["exact_match"]
    ttl: int = Field(1800, ge=1, le=259_200)


class WeightedModel(BaseModel):
    """One model of a weight-based load balancer."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str = Field(min_length=1)
    weight: float = Field(0.5, ge=0.001, le=1, allow_inf_nan=False)


class LoadBalancerOptions(BaseModel):
    """Pick the model of each call by weight."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["weight_based"]
    models: tuple[WeightedModel, ...] = Field(min_length=1)


class TimeoutOptions(BaseModel):
    """The cap on one upstream call, in milliseconds."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # Milliseconds; no call may outlive an attempt (at most five minutes).
    call_timeout: float = Field(ge=1, le=MAX_CALL_TIMEOUT_MS, allow_inf_nan=False)


class RoutingOptions(BaseModel):
    """All routing knobs of one request; every one is optional."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    retry: RetryOptions | None = None
    fallbacks: tuple[FallbackModel, ...] = ()
    fallback_on_codes: tuple[HttpStatus, ...] = DEFAULT_FALLBACK_CODES
    cache: CacheOptions | None = None
    load_balancer: LoadBalancerOptions | None = None
    timeout: TimeoutOptions | None = None

    def model_ids(self) -> list[str]:
        """Every model id the knobs mention (to check they exist)."""
        ids = [fallback.model for fallback in self.fallbacks]
        if self.load_balancer is not None:
            ids.extend(weighted.model for weighted in self.load_balancer.models)
        return ids
