"""The run directory and its ``manifest.json``: what each stage read, wrote, measured and when."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import file_hash, write_json
from .errors import InputError, UsageError

MANIFEST = "manifest.json"


class RunDir:
    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    @staticmethod
    def check_usable(path: Path, resume: bool) -> None:
        """Refuse to overwrite a finished run or a folder that is not ours, before any work starts."""
        if (path / MANIFEST).is_file():
            if not resume:
                raise UsageError(
                    f"run directory '{path}' already holds a run; pass --resume, or another --out"
                )
        elif path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(
                f"'{path}' exists and is not an edgekd run directory; choose another --out"
            )

    @classmethod
    def create(cls, path: Path, config: dict[str, Any], resume: bool) -> RunDir:
        cls.check_usable(path, resume)
        if (path / MANIFEST).is_file():
            run = cls.open(path)
            run.manifest["config"] = config
            return run
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, {"edgekd": __version__, "created": _now(), "config": config, "stages": {}})

    @classmethod
    def open(cls, path: Path) -> RunDir:
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"'{path}' is not an edgekd run directory (no {MANIFEST}); run 'edgekd compress' first"
            ) from None
        except json.JSONDecodeError:
            raise InputError(
                f"'{path / MANIFEST}' is corrupt; start a new run with 'edgekd compress'"
            ) from None
        return cls(path, manifest)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    def stage(self, name: str) -> dict[str, Any]:
        return self.manifest["stages"].setdefault(name, {"status": "pending"})

    def is_current(self, name: str, inputs: dict[str, str]) -> bool:
        """Done, fed the same inputs, and every output still on disk unchanged."""
        rec = self.stage(name)
        if rec.get("status") != "done" or rec.get("inputs") != inputs:
            return False
        return all(
            (self.path / rel).exists() and file_hash(self.path / rel) == digest
            for rel, digest in rec.get("outputs", {}).items()
        )

    def outputs_digest(self, name: str) -> str:
        return json.dumps(self.stage(name).get("outputs", {}), sort_keys=True)

    def start(self, name: str, inputs: dict[str, str]) -> None:
        self.manifest["stages"][name] = {"status": "running", "inputs": inputs, "started": _now()}
        self.save()

    def finish(
        self,
        name: str,
        outputs: list[Path],
        metrics: dict[str, Any],
        seconds: float,
        versions: dict,
    ) -> None:
        rec = self.stage(name)
        rec.update(
            status="done",
            outputs={str(p.relative_to(self.path)): file_hash(p) for p in outputs},
            metrics=metrics,
            finished=_now(),
            seconds=round(seconds, 3),
            versions=versions,
        )
        self.save()

    def fail(self, name: str, message: str) -> None:
        self.stage(name).update(status="failed", error=message, finished=_now())
        self.save()

    def mark_stale(self, names: list[str], because: str) -> None:
        for name in names:
            rec = self.stage(name)
            if rec.get("status") == "done":
                rec.update(status="stale", stale_because=f"{because} re-ran after it")
        self.save()

    def save(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)

    def keep_round(self, name: str, stages: list[str], state: dict[str, Any]) -> None:
        """Copy these stages' outputs and records, and ``state`` (manifest keys), to
        ``rounds/<name>/``, so a later round that does worse cannot cost this one."""
        dest = self.path / "rounds" / name
        shutil.rmtree(dest, ignore_errors=True)  # an earlier round of that name: replaced whole
        records = {s: self.manifest["stages"][s] for s in stages if s in self.manifest["stages"]}
        for rec in records.values():
            for rel in rec.get("outputs", {}):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.path / rel, dest / rel)
        write_json(dest / "round.json", {"stages": records, "state": state})

    def restore_round(self, name: str) -> dict[str, Any]:
        """Put a kept round's outputs and records back; return its ``state``."""
        src = self.path / "rounds" / name
        try:
            kept = json.loads((src / "round.json").read_text(encoding="utf-8"))
            for rec in kept["stages"].values():
                for rel in rec.get("outputs", {}):
                    temp = self.path / f"{rel}.restoring"
                    temp.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src / rel, temp)
                    temp.replace(self.path / rel)  # whole files only, as every artifact
        except (OSError, ValueError) as exc:
            raise InputError(
                f"kept round '{src}' is incomplete ({exc}); run 'edgekd compress' again"
            ) from None
        self.manifest["stages"].update(kept["stages"])
        self.manifest.update(kept["state"])
        self.save()
        return kept["state"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
