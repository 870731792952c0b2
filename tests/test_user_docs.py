"""What users read names things by their public names: the README, the deployment
guide and the API reference (/openapi.json, rendered at /docs) carry none of the
project's internal labels for the gateways whose shapes editq takes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.core.providers_config import load_providers
from app.http.app import create_app
from app.http.app_keys import API_DOCUMENT
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
JARGON = re.compile(r"\bseeds? \d{3}", re.IGNORECASE)


@pytest.mark.parametrize("name", ["README.md", "deploy/README.md"])
def test_the_guides_use_no_internal_labels(name: str) -> None:
    assert JARGON.findall((ROOT / name).read_text()) == []


def test_the_code_uses_no_internal_labels() -> None:
    """Docstrings become the API reference and error messages quote the code's words."""
    labelled = [
        str(path.relative_to(ROOT))
        for folder in ("app", "worker")
        for path in (ROOT / folder).rglob("*.py")
        if JARGON.search(path.read_text())
    ]
    assert labelled == []


def test_the_api_reference_uses_no_internal_labels() -> None:
    app = create_app(Settings(api_keys="key-a"), load_providers(None, {}))
    document = json.dumps(app[API_DOCUMENT].spec)
    assert JARGON.findall(document) == []
