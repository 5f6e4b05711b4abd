"""``package.module:attribute`` specs, shared by teacher and data factories."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import InputError, UsageError


def import_factory(spec: str, what: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what} '{spec}' must look like package.module:factory")
    importable_cwd()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"{what} '{spec}': cannot import '{module_name}' ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"{what} '{spec}': '{module_name}' has no callable '{attr}'")
    return factory


def importable_cwd() -> None:
    """Modules beside the user resolve first, as under ``python -m`` (the console script's
    ``sys.path`` starts at its own bin directory): a factory's module, or the classes a pickled
    whole-model checkpoint names."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
