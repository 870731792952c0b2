"""The providers file: which upstreams exist and which model ids route to them.

A TOML file (``EDITQ_PROVIDERS_FILE``; the packaged ``default_providers.toml``
when unset) with ``[[upstreams]]`` and ``[[models]]`` tables. Loading checks that
every model names a known upstream, so a bad file fails at start-up, not mid-job.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from app.errors import ModelCapabilityMismatch, ModelNotFound

IMAGE_EDIT = "image_edit"

MaskConvention = Literal["transparent_edits", "opaque_edits"]
"""Which mask pixels mark the area to edit: OpenAI's transparent ones, or opaque ones."""

UpstreamKind = Literal["openai", "requesty", "orq", "local", "bfl", "replicate", "fal", "gemini"]

ASYNC_KINDS = frozenset({"bfl", "replicate", "fal"})
"""Kinds whose API takes an edit, answers with a handle at once and is polled for the
result: a job waiting on one holds no worker slot and no connection."""

DEFAULT_BASE_URLS: dict[str, str] = {
    "bfl": "https://api.bfl.ai",
    "replicate": "https://api.replicate.com",
    "fal": "https://queue.fal.run",
    "gemini": "https://generativelanguage.googleapis.com",
}
"""Where a kind's public API lives; ``base_url`` overrides it (tests point it at fakes)."""

InputTransfer = Literal["inline", "url"]
"""How input images reach the upstream: their bytes in the request, or a short-lived
presigned URL of the copy in object storage (for APIs that fetch image URLs)."""


class UpstreamConfig(BaseModel):
    """One upstream service and how to reach it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    kind: UpstreamKind
    base_url: str | None = Field(None, description="the kind's public API when unset")
    api_key_env: str | None = None
    api_key: SecretStr | None = Field(None, description="resolved from api_key_env at load")
    max_concurrency: int = Field(16, ge=1, description="calls in flight, across all workers")
    requests_per_minute: int | None = Field(None, ge=1, description="shared by all workers")
    timeout_s: float = Field(300.0, gt=0, description="cap on one call to this upstream")
    delay_s: float = Field(0.0, ge=0, description="local kind only: seconds each edit takes")
    mask_convention: MaskConvention = "transparent_edits"
    supports_mask: bool = Field(True, description="False: the mask goes as an extra image")
    input_transfer: InputTransfer = "inline"
    poll_initial_s: float = Field(0.5, gt=0, description="async kinds: first wait between polls")
    poll_max_s: float = Field(5.0, gt=0, description="async kinds: longest wait between polls")

    @model_validator(mode="after")
    def _needs_base_url(self) -> UpstreamConfig:
        if self.base_url is None and self.kind in DEFAULT_BASE_URLS:
            object.__setattr__(self, "base_url", DEFAULT_BASE_URLS[self.kind])
        if self.kind != "local" and not self.base_url:
            raise ValueError(f"upstream {self.name!r}: kind {self.kind!r} needs base_url")
        if self.poll_max_s < self.poll_initial_s:
            raise ValueError(f"upstream {self.name!r}: poll_max_s is below poll_initial_s")
        return self

    @property
    def is_async(self) -> bool:
        """Whether edits are submitted and then polled (see ``ASYNC_KINDS``)."""
        return self.kind in ASYNC_KINDS


class ModelConfig(BaseModel):
    """A model id as clients send it, and where it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    upstream: str
    upstream_model: str
    capabilities: tuple[str, ...] = (IMAGE_EDIT,)
    description: str = ""
    version: str | None = Field(
        None, description="replicate: a version id, posted to /v1/predictions"
    )
    prompt_field: str = Field("prompt", description="replicate, fal: the input's prompt field")
    image_field: str = Field("image", description="replicate, fal: the input's image field")
    max_images: int = Field(
        1, ge=1, description="bfl, replicate, fal: input images the model takes (extras refused)"
    )


class ProvidersConfig(BaseModel):
    """All upstreams and models; ``model()`` resolves a client's model id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    upstreams: tuple[UpstreamConfig, ...]
    models: tuple[ModelConfig, ...]

    @model_validator(mode="after")
    def _consistent(self) -> ProvidersConfig:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError("upstream names must be unique")
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique")
        for model in self.models:
            if model.upstream not in names:
                raise ValueError(f"model {model.id!r} names unknown upstream {model.upstream!r}")
        return self

    def upstream(self, name: str) -> UpstreamConfig:
        """The upstream called ``name``; KeyError if there is none."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)

    def model(self, model_id: str) -> ModelConfig:
        """The model with id ``model_id``; KeyError if there is none."""
        for model in self.models:
            if model.id == model_id:
                return model
        raise KeyError(model_id)

    def edit_model(self, model_id: str, *, param: str = "model") -> ModelConfig:
        """The model for an edit request; 400 ``model_not_found`` if none is called
        ``model_id``, 400 ``model_capability_mismatch`` if it exists but cannot edit."""
        for model in self.models:
            if model.id == model_id:
                if IMAGE_EDIT not in model.capabilities:
                    raise ModelCapabilityMismatch(
                        f"model {model_id} does not support image editing", param=param
                    )
                return model
        raise ModelNotFound(
            f"there is no model {model_id}; GET /v1/models lists the available ones",
            param=param,
        )


class ProvidersFileError(ValueError):
    """The providers file cannot be read or does not describe a valid configuration."""


def load_providers(path: Path | None, environ: Mapping[str, str]) -> ProvidersConfig:
    """Read the providers file (the built-in default when ``path`` is None).

    ``api_key_env`` names are resolved against ``environ``. Raises
    ProvidersFileError with the reason when the file is unreadable or invalid.
    """
    try:
        if path is None:
            text = resources.files("app.core").joinpath("default_providers.toml").read_text()
        else:
            text = path.read_text()
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProvidersFileError(f"cannot read providers file {path}: {exc}") from exc
    for upstream in raw.get("upstreams", []):
        env_name = upstream.get("api_key_env")
        if isinstance(env_name, str) and environ.get(env_name):
            upstream["api_key"] = environ[env_name]
    try:
        return ProvidersConfig.model_validate(raw)
    except ValidationError as exc:
        raise ProvidersFileError(f"invalid providers file {path or 'default'}: {exc}") from exc
