"""Settings from the environment, and handing them on to a child process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.settings import Settings, settings_environment


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDITQ_* or AWS_* variables from the machine leak into these tests."""
    for name in list(os.environ):
        if name.startswith(("EDITQ_", "AWS_")):
            monkeypatch.delenv(name)


def secrets(values: tuple[SecretStr, ...]) -> list[str]:
    return [value.get_secret_value() for value in values]


@pytest.mark.parametrize(
    ("raw", "keys"),
    [
        ("a, b,,c", ["a", "b", "c"]),
        ("single", ["single"]),
        ("", []),
        (" , ,", []),
    ],
)
def test_api_keys_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, keys: list[str]
) -> None:
    monkeypatch.setenv("EDITQ_API_KEYS", raw)
    assert secrets(Settings().api_keys) == keys


def test_defaults() -> None:
    settings = Settings()
    assert (settings.redis_url, settings.key_prefix, settings.api_keys) == (
        "redis://127.0.0.1:6379/0",
        "editq",
        (),
    )
    assert settings.s3_access_key_id is None
    assert settings.presign_endpoint_url is None


@pytest.mark.parametrize(
    ("variable", "secret_variable"),
    [
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("EDITQ_S3_ACCESS_KEY_ID", "EDITQ_S3_SECRET_ACCESS_KEY"),
    ],
)
def test_s3_credentials_aliases(
    monkeypatch: pytest.MonkeyPatch, variable: str, secret_variable: str
) -> None:
    monkeypatch.setenv(variable, "AKIA123")
    monkeypatch.setenv(secret_variable, "s3cr3t")
    settings = Settings()
    assert settings.s3_access_key_id is not None
    assert settings.s3_access_key_id.get_secret_value() == "AKIA123"
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "s3cr3t"


def test_editq_credentials_win_over_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-aws")
    monkeypatch.setenv("EDITQ_S3_ACCESS_KEY_ID", "from-editq")
    settings = Settings()
    assert settings.s3_access_key_id is not None
    assert settings.s3_access_key_id.get_secret_value() == "from-editq"


def test_presign_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITQ_S3_ENDPOINT_URL", "http://minio:9000")
    assert Settings().presign_endpoint_url == "http://minio:9000"
    monkeypatch.setenv("EDITQ_S3_PUBLIC_ENDPOINT_URL", "https://files.example.com")
    assert Settings().presign_endpoint_url == "https://files.example.com"


def test_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Settings().key_prefix = "other"  # type: ignore[misc]


def custom() -> Settings:
    """Every field set to something other than its default."""
    return Settings(
        redis_url="redis://cache:6380/3",
        key_prefix="kp",
        queue_name="kp:queue",
        s3_endpoint_url="http://s3:9000",
        s3_public_endpoint_url="https://files.example.com",
        s3_bucket="bucket",
        s3_region="eu-west-1",
        s3_access_key_id=SecretStr("AKIA"),
        s3_secret_access_key=SecretStr("secret"),
        s3_max_connections=3,
        providers_file=Path("/etc/editq/providers.toml"),
        api_keys=(SecretStr("key-a"), SecretStr("key-b")),
        url_expiry_s=60,
        max_body_bytes=5000,
        max_image_bytes=4000,
        max_images=2,
        max_image_pixels=1000,
        max_prompt_chars=7,
        attempt_budget_s=1.5,
        max_wait_s=0.0,
        job_lease_s=2.5,
        retention_s=61,
        worker_max_jobs=3,
        worker_poll_delay_s=0.01,
        worker_health_check_interval_s=1.25,
        log_level="DEBUG",
    )


@pytest.mark.parametrize("kind", ["custom", "defaults"])
def test_environment_round_trip(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    original = custom() if kind == "custom" else Settings()
    environment = settings_environment(original)
    assert all(name.startswith("EDITQ_") for name in environment)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    rebuilt = Settings()
    for field in Settings.model_fields:
        assert getattr(rebuilt, field) == getattr(original, field), field
    assert rebuilt == original


def test_environment_holds_plain_secrets() -> None:
    environment = settings_environment(custom())
    assert environment["EDITQ_API_KEYS"] == "key-a,key-b"
    assert environment["EDITQ_S3_SECRET_ACCESS_KEY"] == "secret"
    assert environment["EDITQ_PROVIDERS_FILE"] == "/etc/editq/providers.toml"
    assert "EDITQ_S3_ENDPOINT_URL" not in settings_environment(Settings())
