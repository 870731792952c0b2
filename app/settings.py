"""The one configuration object, read from ``EDITQ_*`` variables once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.webhooks import parse_schedule

MB = 1024 * 1024


class Settings(BaseSettings):
    """Everything editq reads from its environment; frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="EDITQ_", frozen=True, extra="ignore", populate_by_name=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field("editq", description="prefix of every Redis key editq writes")
    queue_name: str = "editq:queue"

    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="endpoint clients use for presigned URLs, when it differs"
    )
    s3_bucket: str = "editq"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("EDITQ_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("EDITQ_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    s3_max_connections: int = Field(64, ge=1)

    providers_file: Path | None = None
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    url_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)

    max_body_bytes: int = Field(100 * MB, ge=1)
    max_image_bytes: int = Field(50 * MB, ge=1)
    max_images: int = Field(16, ge=1)
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_request_pixels: int = Field(
        200_000_000, ge=1, description="pixels all images of one request may declare"
    )
    decode_budget_pixels: int = Field(
        100_000_000,
        ge=1,
        description="pixels an API process decodes at once, all requests (a WebP pixel "
        "counts 4: 4 bytes a pixel, so 400 MB of decodes at most)",
    )
    decode_wait_s: float = Field(
        10.0, gt=0, le=300, description="how long a decode waits for the budget before 503"
    )
    max_prompt_chars: int = Field(32_000, ge=1)
    allow_private_urls: bool = Field(
        False, description="let outbound URLs reach private, loopback and link-local addresses"
    )
    remote_fetch_timeout_s: float = Field(20.0, gt=0, description="time to fetch one image_url")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="time a client has to send a whole request body (else 408)"
    )
    rate_limit_per_minute: int = Field(600, ge=1, description="requests per API key per minute")
    auth_failures_per_minute: int = Field(
        30, ge=1, description="failed authentications per client address before 429"
    )

    attempt_budget_s: float = Field(300.0, gt=0, description="upstream time per job attempt")
    max_wait_s: float = Field(300.0, ge=0, description="longest ?wait= long-poll")
    sync_wait_limit_s: float = Field(
        330.0, gt=0, description="longest wait of a synchronous /images/edits request"
    )
    sync_retry_window_s: float = Field(
        600.0,
        gt=0,
        description="how long an SDK's retry (x-stainless-retry-count >= 1) of a synchronous "
        "edit without an Idempotency-Key is attached to the job of the same request",
    )
    stream_keepalive_s: float = Field(
        15.0,
        gt=0,
        description="seconds between keepalive comments on a streamed synchronous edit "
        "while its job is queued or running",
    )
    job_lease_s: float = Field(
        10.0, gt=0, description="a running job's lease, renewed by its worker"
    )
    submit_lease_s: float = Field(
        15.0,
        gt=0,
        le=300,
        description="how long a submit's Idempotency-Key and half-written batch stay held "
        "for an API process that stopped renewing them (died) before a retry takes over",
    )
    retention_s: int = Field(7 * 24 * 3600, ge=1, description="job records and images live")
    janitor_interval_s: float = Field(60.0, gt=0, description="how often expired S3 objects go")

    webhook_secret: SecretStr | None = Field(
        None,
        description="the root each key's signing secret is derived from (never handed out; "
        "unset: one random secret per key, stored in Redis)",
    )
    webhook_retry_schedule: str = Field(
        "0,5,300,1800,7200,18000,36000,50400,72000,86400",
        description="seconds before each delivery attempt (Standard Webhooks schedule)",
    )
    webhook_timeout_s: float = Field(15.0, gt=0, description="a 2xx must arrive within this")
    webhook_claim_lease_s: float = Field(
        60.0, gt=0, description="an event being delivered is re-sent if not settled by then"
    )

    max_batch_variants: int = Field(10_000, ge=1)
    batch_window: int = Field(
        200, ge=1, description="variants of one batch in the bulk queue at once (fair share)"
    )
    interactive_reserve_slots: int = Field(
        1, ge=0, description="slots of each upstream (cap >= 2) batches leave for single jobs"
    )

    worker_drain_s: float = Field(
        300.0, ge=0, description="on SIGTERM, time running jobs get to finish before hand-back"
    )
    worker_max_jobs: int = Field(1000, ge=1)
    worker_poll_delay_s: float = Field(0.005, gt=0)
    worker_health_check_interval_s: float = Field(10.0, gt=0)
    worker_metrics_host: str = Field("0.0.0.0", description="where a worker serves /metrics")
    worker_metrics_port: int = Field(
        9464, ge=0, le=65535, description="a worker's Prometheus port (0: not served)"
    )
    metrics_public: bool = Field(False, description="serve the API's GET /metrics without a key")

    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="browser origins allowed to call the API, comma-separated "
        "(https://app.example; * for any); none by default",
    )

    crash_at: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="testing only: die (SIGKILL) on reaching these named points "
        "(name or name@n, comma-separated; see app/crash_points.py)",
    )

    log_level: str = "INFO"
    log_format: Literal["json", "text"] | None = Field(
        None, description="log line format (default: json for api and worker, text for dev)"
    )

    @field_validator("api_keys", "cors_origins", "crash_at", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @property
    def retry_schedule(self) -> tuple[float, ...]:
        """The webhook retry schedule in seconds."""
        return parse_schedule(self.webhook_retry_schedule)

    @property
    def presign_endpoint_url(self) -> str | None:
        """The S3 endpoint that goes into presigned URLs."""
        return self.s3_public_endpoint_url or self.s3_endpoint_url


def settings_environment(settings: Settings) -> dict[str, str]:
    """``settings`` as ``EDITQ_*`` variables, to hand the same configuration to a child."""
    environment: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(_plain(item) for item in value)
        environment[f"EDITQ_{name.upper()}"] = _plain(value)
    return environment


def _plain(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)
