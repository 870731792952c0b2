"""Signing secrets and their rotation: during the overlap each event carries a
signature by the new secret and one by the secret it replaced, so a receiver holding
either accepts it (checked with the real ``standardwebhooks`` library); after, only
the new one signs. The clock is the ``now`` each call is handed: a rotation is placed
in the past rather than waited for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.core.webhooks import SigningSecrets, derived_secret, new_secret, signed_headers

OVERLAP = timedelta(hours=24)
BODY = '{"type":"job.succeeded","timestamp":"2026-01-01T12:00:00Z","data":{}}'
ROOT = "whsec_cm9vdA=="
TENANT = "0123456789abcdef"


def rotated(at: datetime, overlap: timedelta = OVERLAP) -> SigningSecrets:
    """A tenant's secrets after a rotation at ``at`` that kept the old one ``overlap``."""
    return SigningSecrets(
        current=new_secret(), previous=new_secret(), previous_until=(at + overlap).timestamp()
    )


def accepts(secret: str, headers: dict[str, str]) -> bool:
    """Whether a receiver holding ``secret`` accepts the delivery."""
    try:
        Webhook(secret).verify(BODY, headers)
    except WebhookVerificationError:
        return False
    return True


def test_during_the_overlap_a_receiver_with_either_secret_accepts() -> None:
    now = datetime.now(tz=UTC)
    secrets = rotated(at=now - timedelta(hours=1))
    headers = signed_headers(secrets, "evt_1", BODY, now)
    assert secrets.previous is not None
    assert accepts(secrets.current, headers)
    assert accepts(secrets.previous, headers)
    assert not accepts(new_secret(), headers)
    new, old = headers["webhook-signature"].split(" ")
    assert new == Webhook(secrets.current).sign("evt_1", now, BODY)  # the new one first
    assert old == Webhook(secrets.previous).sign("evt_1", now, BODY)


@pytest.mark.parametrize("since", [OVERLAP, OVERLAP + timedelta(seconds=1), timedelta(days=30)])
def test_after_the_overlap_only_the_new_secret_signs(since: timedelta) -> None:
    now = datetime.now(tz=UTC)
    secrets = rotated(at=now - since)
    headers = signed_headers(secrets, "evt_1", BODY, now)
    assert secrets.previous is not None
    assert accepts(secrets.current, headers)
    assert not accepts(secrets.previous, headers)
    assert headers["webhook-signature"].count("v1,") == 1


def test_a_secret_never_rotated_signs_alone() -> None:
    now = datetime.now(tz=UTC)
    secrets = SigningSecrets(current=new_secret())
    headers = signed_headers(secrets, "evt_1", BODY, now)
    assert accepts(secrets.current, headers)
    assert headers["webhook-signature"] == Webhook(secrets.current).sign("evt_1", now, BODY)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))


def test_the_previous_secret_is_in_use_until_its_expiry_exclusive() -> None:
    secrets = SigningSecrets(current="whsec_bmV3", previous="whsec_b2xk", previous_until=1000.0)
    assert secrets.in_use(999.999) == ("whsec_bmV3", "whsec_b2xk")
    assert secrets.previous_expires_at(999.999) == 1000.0
    assert secrets.in_use(1000.0) == ("whsec_bmV3",)
    assert secrets.previous_expires_at(1000.0) is None
    assert SigningSecrets(current="whsec_bmV3").in_use(0) == ("whsec_bmV3",)


def test_generation_zero_is_the_secret_derived_before_rotation_existed() -> None:
    # A key's secret must not change when this server is upgraded: receivers hold it.
    expected = "whsec_2LuFVO04J5BUw6Y96C5endR/425ZpZSn3CYdwwp8gic="
    assert derived_secret(ROOT, TENANT) == derived_secret(ROOT, TENANT, 0) == expected


def test_each_generation_and_tenant_derives_its_own_secret_never_the_root() -> None:
    secrets = {
        derived_secret(ROOT, tenant, generation)
        for tenant in (TENANT, "fedcba9876543210")
        for generation in range(4)
    }
    assert len(secrets) == 8
    assert ROOT not in secrets
    assert all(secret.startswith("whsec_") for secret in secrets)
    assert derived_secret(ROOT, TENANT, 3) == derived_secret(ROOT, TENANT, 3)
    assert derived_secret("whsec_b3RoZXI=", TENANT, 1) != derived_secret(ROOT, TENANT, 1)
