"""Load the teacher a user names; every failure is one line that says what to do."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, UsageError
from ..specs import import_factory, importable_cwd
from .exported import load_exported


def load_teacher(
    spec: str | None,
    weights: str | None = None,
    trust: bool = False,
    log: Callable[[str], None] = print,
) -> nn.Module:
    spec = spec or "demo"
    if spec == "demo":
        if weights:
            raise UsageError(
                "--weights does not apply to the demo teacher; drop it or name a factory"
            )
        from .demo import demo_teacher

        return demo_teacher(log)
    path = Path(spec)
    if spec.endswith(".pt2"):
        return load_exported(path)
    if spec.endswith((".pt", ".pth")):
        return _pickled_module(path, trust)
    if ":" in spec and not path.exists():
        model = import_factory(spec, "teacher")()
        if not isinstance(model, nn.Module):
            raise InputError(
                f"teacher '{spec}' returned {type(model).__name__}, not a torch nn.Module"
            )
        if weights:
            _load_weights(model, Path(weights), trust)
        return model.eval()
    raise InputError(
        f"teacher '{spec}' not found; pass 'demo', package.module:factory (with --weights FILE), "
        "or a torch.export .pt2 archive"
    )


def read_checkpoint(path: Path, trust: bool = False) -> object:
    """``torch.load`` with ``weights_only=True`` unless the user trusts the file (--trust-checkpoint)."""
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust and "Unsupported global" in str(exc):  # a pickled object, not a broken file
            raise InputError(
                f"checkpoint '{path}' holds Python objects beyond tensors; if you trust it, "
                "re-run with --trust-checkpoint"
            ) from None
        raise InputError(f"checkpoint '{path}' is corrupt or not a PyTorch file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        raise InputError(f"checkpoint '{path}' is corrupt or not a PyTorch file") from None


def _load_weights(model: nn.Module, path: Path, trust: bool) -> None:
    state = read_checkpoint(path, trust)
    if isinstance(state, dict):  # common wrappers around a state dict
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise InputError(f"checkpoint '{path}' is not a state dict ({type(state).__name__})")
    result = model.load_state_dict(state, strict=False)
    problems = [f"missing {k}" for k in result.missing_keys] + [
        f"unexpected {k}" for k in result.unexpected_keys
    ]
    if problems:
        shown = ", ".join(problems[:3]) + (
            f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        )
        raise InputError(f"weights '{path}' do not fit the teacher: {shown}")


def _pickled_module(path: Path, trust: bool) -> nn.Module:
    if not trust:
        raise UsageError(
            f"'{path}' is a pickled module, which runs code when loaded; re-run with "
            "--trust-checkpoint if you trust it, or pass package.module:factory --weights FILE"
        )
    importable_cwd()
    model = read_checkpoint(path, trust=True)
    if not isinstance(model, nn.Module):
        raise InputError(
            f"'{path}' holds {type(model).__name__}, not an nn.Module; use --weights for state dicts"
        )
    return model.eval()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of a model's architecture (its modules' repr) and its parameters and buffers:
    resume notices changed weights, and a changed architecture with the same weights."""
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()
