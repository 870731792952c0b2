"""What users read names things by their public names: the README, the deployment
guide and the API reference (/openapi.json, rendered at /docs) carry none of the
project's internal labels for the gateways whose shapes editq takes."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from app.core.providers_config import load_providers
from app.http.app import create_app
from app.http.app_keys import API_DOCUMENT
from app.settings import Settings
from worker.providers.registry import build_upstreams

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


def _readme_toml_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_has_a_providers_example_for_every_kind() -> None:
    kinds = set(re.findall(r'^kind = "(\w+)"', "".join(_readme_toml_blocks()), re.MULTILINE))
    assert kinds >= {"openai", "bfl", "replicate", "fal", "gemini"}


@pytest.mark.parametrize("block", range(len(_readme_toml_blocks())))
async def test_each_readme_providers_example_loads_and_builds_its_adapters(
    block: int, tmp_path: Path
) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(_readme_toml_blocks()[block])
    providers = load_providers(path, {})
    async with aiohttp.ClientSession() as session:
        with ThreadPoolExecutor(1) as executor:
            adapters = build_upstreams(providers, session, executor)
            assert set(adapters) == {upstream.name for upstream in providers.upstreams}
            for adapter in adapters.values():
                await adapter.close()
    for model in providers.models:
        assert providers.edit_model(model.id).upstream in adapters
