"""Teachers (``demo``, ``package.module:factory`` [+ weights], ``.pt2``) and student checkpoints."""

from __future__ import annotations

from .student import load_student, save_student
from .teacher import load_teacher, model_fingerprint

__all__ = ["load_student", "load_teacher", "model_fingerprint", "save_student"]
