"""Fields that single jobs and batches both accept, each validated by one definition.

``Metadata`` (at most 16 keys; keys up to 64 characters, values up to 512),
``WebhookUrl`` (at most 2,048 characters) and ``event_list`` (a webhook event list
given as a JSON list, a JSON list in a string, or a comma-separated string, as a
form field may send it) are used by ``EditParams`` and by the batch options alike,
so a limit can never hold for one and not the other.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import AfterValidator, Field

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
WEBHOOK_URL_MAX_CHARS = 2048


def _bounded_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"metadata holds at most {METADATA_MAX_KEYS} keys")
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY_CHARS or len(item) > METADATA_MAX_VALUE_CHARS:
            raise ValueError(
                f"metadata keys are at most {METADATA_MAX_KEY_CHARS} characters, "
                f"values {METADATA_MAX_VALUE_CHARS}"
            )
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_bounded_metadata)]
WebhookUrl = Annotated[str, Field(max_length=WEBHOOK_URL_MAX_CHARS)]


def event_list(value: object) -> object:
    """A webhook event list as sent: a string is a JSON list or comma-separated names.

    Anything else is returned as it is, for the model's own validation to judge.
    """
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return tuple(item.strip() for item in value.split(",") if item.strip())
