"""Distillation across processes: ``torchrun --nproc_per_node N -m edgekd compress ...``.

Every rank runs the command. Rank 0 runs the pipeline and is the only one that writes; the
others wait for its distill stage, which tells them what to train (``Job``), load the same
teacher, data and pruned student themselves, and train their part of every batch in
DistributedDataParallel (Gloo on CPUs, NCCL on GPUs). The losses are weighted so that DDP's
average of the ranks' gradients is the gradient one process takes on the whole batch, and
what decides (validation scores, the checkpoint resumed from) is rank 0's, shared, so all
ranks stop together and the result is one process's."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import StageError, UsageError

T = TypeVar("T")
# Ranks other than 0 wait in a collective while rank 0 measures and plans (an hour or more on a
# large model); torchrun ends them all if one fails, so a long timeout does not hang a failure.
WAIT = timedelta(hours=24)


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    busy: bool = False  # rank 0 is in a job: the others are in its collectives, not waiting for one

    def share(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self._collective_device)
        return box[0]

    def part(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's part of a batch of example indices (all of it for one process)."""
        return batch.tensor_split(self.world)[self.rank]

    def weight(self, part: int, whole: int) -> float:
        """What a rank's mean loss over ``part`` of a batch of ``whole`` is scaled by so that
        DDP's mean of the ranks' gradients is the gradient of the whole batch's mean loss."""
        return part * self.world / whole

    def mean(self, loss: torch.Tensor) -> torch.Tensor:
        """The whole batch's mean loss from each rank's weighted one."""
        if self.world == 1:
            return loss
        total = loss.detach().clone()
        dist.all_reduce(total)
        return total / self.world

    def wrap(self, model: nn.Module, example: Any) -> nn.Module:
        """The model as trained: DDP across ranks (which starts every rank from rank 0's
        parameters and buffers, so quantizer ranges agree), itself in one process. Parameters
        the forward on ``example`` leaves without a gradient (a pooler nothing reads) are
        frozen first: DDP waits for a gradient of every trainable one, and one process's
        optimizer skips them all the same."""
        if self.world == 1:
            return model
        from .data.inputs import call
        from .data.outputs import flatten

        sum(t.float().sum() for t in flatten(call(model, example))).backward()
        for p in model.parameters():
            if p.grad is None:
                p.requires_grad_(False)
        model.zero_grad(set_to_none=True)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    @contextlib.contextmanager
    def job(self, make: Callable[[], Job]) -> Iterator[None]:
        """On rank 0: send the job ``make`` builds to the other ranks and train it with them. A StageError
        (a loss that is not finite) is raised on every rank alike, which then waits for the
        next job; any other leaves the others mid-collective, for torchrun to end."""
        if self.world > 1:
            self.share(make())
        self.busy = True
        try:
            yield
        except StageError:
            self.busy = False
            raise
        self.busy = False


@dataclass
class Job:
    """What rank 0's distill stage tells the other ranks. They load the teacher, the data and
    the pruned student as rank 0 did (a memory-mapped folder is not sent, and a quantized
    student's classes are made at run time, so it cannot be), and check them by fingerprint."""

    config: dict[str, Any]  # the run's: teacher, weights, trust_checkpoint, data
    transform: Any  # the recipe's data.transform
    teacher_fingerprint: str
    data_fingerprint: str
    student: Path  # the prune stage's student.pt
    plan: Any
    task: Any
    cfg: Any  # the recipe's distill section


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def pick_device(setting: str, local_rank: int, world: int) -> torch.device:
    """``--device``: auto (CUDA where torch sees it, else CPU), cpu, cuda or cuda:N; under
    torchrun every rank takes the GPU of its local rank."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cpu":
        return torch.device("cpu")
    kind, _, index = setting.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise UsageError(f"--device '{setting}': use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {setting}: torch sees no CUDA device here (a CPU build, or no driver); "
            "use --device cpu"
        )
    if index and world > 1:
        raise UsageError(
            f"--device {setting}: under torchrun each rank takes the GPU of its local rank; "
            "pass --device cuda (CUDA_VISIBLE_DEVICES chooses the GPUs)"
        )
    number = local_rank if world > 1 else int(index or 0)
    if number >= torch.cuda.device_count():
        raise UsageError(
            f"--device {setting}: GPU {number} asked for, {torch.cuda.device_count()} seen"
        )
    return torch.device("cuda", number)


@contextlib.contextmanager
def joined(device_setting: str) -> Iterator[Ranks]:
    """This process's rank, in the process group when torchrun started several."""
    rank, world, local = launched()
    ranks = Ranks(rank, world, pick_device(device_setting, local, world))
    if world == 1:
        yield ranks
        return
    if ranks.device.type == "cuda":
        torch.cuda.set_device(ranks.device)
    dist.init_process_group("nccl" if ranks.device.type == "cuda" else "gloo", timeout=WAIT)
    try:
        yield ranks
    finally:
        if rank == 0 and not ranks.busy:  # the others wait for a job: none is coming
            ranks.share(None)
        if not ranks.busy:  # else a rank is mid-collective: torchrun ends them all
            dist.destroy_process_group()


def serve(ranks: Ranks) -> None:
    """A rank other than 0: train each job rank 0 sends, until it sends none."""
    from .data import load_data
    from .data.inputs import as_example
    from .distill import prepared_student
    from .distill.train import distill
    from .models import load_teacher, model_fingerprint

    loaded: dict[str, Any] = {}
    while (job := ranks.share(None)) is not None:
        key = repr((job.config, job.transform))
        if key not in loaded:  # the same for every round of the plan search
            c = job.config
            teacher = load_teacher(c["teacher"], c["weights"], c["trust_checkpoint"], _silent)
            loaded = {key: (teacher, load_data(c["data"], job.transform, teacher))}
        teacher, data = loaded[key]
        for what, mine, theirs in (
            ("teacher", model_fingerprint(teacher), job.teacher_fingerprint),
            ("data", data.fingerprint(), job.data_fingerprint),
        ):
            if mine != theirs:
                raise StageError(
                    f"rank {ranks.rank} loaded a {what} unlike rank 0's "
                    f"('{job.config[what]}'): every rank must load the same (a factory must "
                    "not draw at random)"
                )
        student = prepared_student(teacher, job.student, job.plan, as_example(data.train.x[:2]))[0]
        with (
            tempfile.TemporaryDirectory(prefix="edgekd-rank-") as scratch,
            contextlib.suppress(StageError),  # rank 0 raised it too, and says it
        ):
            distill(student, teacher, data, job.task, job.cfg, _silent, scratch=Path(scratch),
                    ranks=ranks)  # fmt: skip


def _silent(_message: str) -> None:
    """Rank 0 logs."""
