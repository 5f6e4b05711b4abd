"""Plan vs reality: what each runtime really did with the student, read from its compiled graph.

The plan says how each layer should run on each target runtime (``LayerPlan.kernels``) and in
what precision float layers run; the runtime's compiled graph says what it did. Every difference
is listed, so a report never claims an int8 kernel where the CPU ran a float one.
"""

from __future__ import annotations

import numpy as np

from ..evaluate import RUNTIME_BATCH, predict
from ..plan import Plan
from ..runtimes import Session
from ..targets import RuntimeSupport
from ..task import Task


def deployed_check(session: Session, x: np.ndarray, reference: np.ndarray, task: Task) -> dict:
    """The runtime's own default precision, and how far it moves outputs from PyTorch's."""
    pred = predict(session.run, x, batch=RUNTIME_BATCH)
    return {"inference_precision": session.inference_precision(), **task.agreement(pred, reference)}


def compare_with_plan(
    plan: Plan, target: str, rt: RuntimeSupport, session: Session
) -> tuple[list[dict], list[dict]]:
    """(per-layer rows, mismatches) for the student on one target runtime."""
    key = f"{target}/{rt.name}"
    executed = session.layer_kernels([lp.name for lp in plan.layers])
    rows, mismatches = [], []
    for lp in plan.layers:
        got = executed.get(lp.name)
        row = {
            "target": target,
            "runtime": rt.name,
            "layer": lp.name,
            "planned": lp.kernels[key],
            "planned_runs_as": lp.runs_as[key],
            "executed": got["kind"] if got else None,  # None: the runtime's graph does not say
            "kernel": got["kernel"] if got else None,
        }
        rows.append(row)
        if got and got["kind"] != lp.kernels[key]:
            mismatches.append({**row, "what": "layer kernel"})
    precision = session.inference_precision()
    if precision.split(";")[0].strip() != rt.inference_precision:
        mismatches.append(
            {
                "target": target,
                "runtime": rt.name,
                "layer": None,
                "planned": rt.inference_precision,
                "executed": precision,
                "what": "inference precision",
            }
        )
    return rows, mismatches
