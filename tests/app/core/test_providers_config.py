"""The providers file: loading, key resolution, consistency checks, model lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.providers_config import ProvidersFileError, load_providers
from app.errors import ModelCapabilityMismatch, ModelNotFound

OPENAI_FILE = """
[[upstreams]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
max_concurrency = 4

[[upstreams]]
name = "local"
kind = "local"

[[models]]
id = "openai/gpt-image-1"
upstream = "openai"
upstream_model = "gpt-image-1"

[[models]]
id = "openai/gpt-4o"
upstream = "openai"
upstream_model = "gpt-4o"
capabilities = ["chat"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text)
    return path


def test_default_file() -> None:
    providers = load_providers(None, {})
    assert providers.upstream("local").kind == "local"
    model = providers.edit_model("local/editor")
    assert (model.upstream, model.upstream_model) == ("local", "pillow")
    assert providers.edit_model("local/slow-editor").upstream == "local-slow"
    assert providers.upstream("local-slow").delay_s == 5.0


def test_openai_upstream_key_from_environ(tmp_path: Path) -> None:
    providers = load_providers(write(tmp_path, OPENAI_FILE), {"OPENAI_API_KEY": "sk-test"})
    upstream = providers.upstream("openai")
    assert (upstream.kind, upstream.base_url, upstream.max_concurrency) == (
        "openai",
        "https://api.openai.com/v1",
        4,
    )
    assert upstream.api_key is not None
    assert upstream.api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(providers)
    assert providers.upstream("local").api_key is None
    assert providers.edit_model("openai/gpt-image-1").upstream == "openai"


@pytest.mark.parametrize("environ", [{}, {"OPENAI_API_KEY": ""}, {"OTHER": "sk-x"}])
def test_key_left_unset_when_environ_lacks_it(tmp_path: Path, environ: dict[str, str]) -> None:
    providers = load_providers(write(tmp_path, OPENAI_FILE), environ)
    assert providers.upstream("openai").api_key is None


def test_unknown_upstream_raises_key_error(tmp_path: Path) -> None:
    providers = load_providers(write(tmp_path, OPENAI_FILE), {})
    with pytest.raises(KeyError):
        providers.upstream("anthropic")


LOCAL = '[[upstreams]]\nname = "local"\nkind = "local"\n'
MODEL = '[[models]]\nid = "m"\nupstream = "local"\nupstream_model = "pillow"\n'


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (LOCAL + MODEL.replace('upstream = "local"', 'upstream = "nowhere"'), "unknown upstream"),
        (LOCAL + LOCAL + MODEL, "upstream names must be unique"),
        (LOCAL + MODEL + MODEL, "model ids must be unique"),
        ('[[upstreams]]\nname = "o"\nkind = "openai"\n' + MODEL, "needs base_url"),
        ('[[upstreams]]\nname = "o"\nkind = "grpc"\n', "kind"),
        (LOCAL + MODEL + 'colour = "blue"\n', "colour"),
        (LOCAL, "models"),
        ("[[upstreams]\nname = ", "cannot read"),
    ],
)
def test_invalid_files(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(ProvidersFileError) as caught:
        load_providers(write(tmp_path, text), {})
    assert reason in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProvidersFileError, match="cannot read"):
        load_providers(tmp_path / "absent.toml", {})


def test_edit_model_unknown(tmp_path: Path) -> None:
    """A model that is not configured is not found (still a 400: the request is wrong),
    not a capability mismatch."""
    providers = load_providers(write(tmp_path, OPENAI_FILE), {})
    with pytest.raises(ModelNotFound) as caught:
        providers.edit_model("openai/dall-e-9", param="fallbacks[0].model")
    error = caught.value
    assert (error.status, error.code, error.param) == (
        400,
        "model_not_found",
        "fallbacks[0].model",
    )
    assert "openai/dall-e-9" in error.message


def test_edit_model_that_cannot_edit(tmp_path: Path) -> None:
    providers = load_providers(write(tmp_path, OPENAI_FILE), {})
    with pytest.raises(ModelCapabilityMismatch) as caught:
        providers.edit_model("openai/gpt-4o")
    assert (caught.value.param, caught.value.code) == ("model", "model_capability_mismatch")
    assert "does not support image editing" in caught.value.message


@pytest.mark.parametrize(
    ("kind", "base_url", "is_async"),
    [
        ("bfl", "https://api.bfl.ai", True),
        ("replicate", "https://api.replicate.com", True),
        ("fal", "https://queue.fal.run", True),
        ("gemini", "https://generativelanguage.googleapis.com", False),
    ],
)
def test_native_kinds_default_to_their_public_api(
    tmp_path: Path, kind: str, base_url: str, is_async: bool
) -> None:
    text = f'[[upstreams]]\nname = "u"\nkind = "{kind}"\n' + MODEL.replace('"local"', '"u"')
    upstream = load_providers(write(tmp_path, text), {}).upstream("u")
    assert upstream.base_url == base_url
    assert upstream.is_async is is_async
    assert upstream.input_transfer == "inline"


def test_a_base_url_overrides_the_public_api(tmp_path: Path) -> None:
    text = '[[upstreams]]\nname = "u"\nkind = "fal"\nbase_url = "http://127.0.0.1:9"\n'
    upstream = load_providers(write(tmp_path, text + MODEL.replace('"local"', '"u"')), {})
    assert upstream.upstream("u").base_url == "http://127.0.0.1:9"


def test_poll_cadence_must_rise(tmp_path: Path) -> None:
    text = '[[upstreams]]\nname = "u"\nkind = "bfl"\npoll_initial_s = 3\npoll_max_s = 1\n'
    with pytest.raises(ProvidersFileError, match="poll_max_s"):
        load_providers(write(tmp_path, text + MODEL.replace('"local"', '"u"')), {})
