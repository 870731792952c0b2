"""The client's public surface is ``app.client.__all__``, complete and exact.

Each public name a submodule of ``app.client`` defines (a class, function, constant or
alias bound at its top level, not imported) is either exported by the package or
listed in ``INTERNAL`` with why users have no use for it; every name exported exists
and is the object its submodule defines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import ParamSpec, TypeVar

import app.client

INTERNAL = {
    "DEFAULT_TIMEOUT_S": "the default of the clients' timeout argument",
    "LONG_POLL_S": "how long one request of wait() polls",
    "multipart_form": "builds the upload bodies of submit() and submit_batch()",
    "image_type": "guesses the content type of an uploaded image",
}
"""Public by name (sibling modules import them) but not meant for users."""


def submodules() -> list[ModuleType]:
    """Every module of the ``app.client`` package, imported."""
    names = [info.name for info in pkgutil.iter_modules(app.client.__path__)]
    assert names, "app.client has no submodules"
    return [importlib.import_module(f"app.client.{name}") for name in names]


def definitions(module: ModuleType) -> set[str]:
    """The names ``module`` binds at its top level by its own code, not by an import."""
    names: set[str] = set()
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def offered(module: ModuleType) -> set[str]:
    """What ``module`` defines that is public by name, type variables aside."""
    return {
        name
        for name in definitions(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), TypeVar | ParamSpec)
    }


def test_every_public_definition_is_exported_or_declared_internal() -> None:
    defined = {name for module in submodules() for name in offered(module)}
    assert defined - INTERNAL.keys() - set(app.client.__all__) == set()
    assert INTERNAL.keys() <= defined, "an INTERNAL name no submodule defines any more"
    assert INTERNAL.keys().isdisjoint(app.client.__all__)


def test_every_exported_name_is_a_submodules_own_definition() -> None:
    owners = {name: module for module in submodules() for name in offered(module)}
    assert len(app.client.__all__) == len(set(app.client.__all__))
    for name in app.client.__all__:
        assert name in owners, f"{name} is exported but no submodule defines it"
        assert getattr(app.client, name) is getattr(owners[name], name), name


def test_the_package_namespace_holds_only_the_exported_names() -> None:
    modules = {module.__name__.rsplit(".", 1)[-1] for module in submodules()}
    public = {name for name in vars(app.client) if not name.startswith("_")}
    assert public - modules == set(app.client.__all__)
