from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata

from conftest import edgekd

from edgekd.cpu import detect_cpu
from edgekd.doctor import L4T_RELEASE
from edgekd.runtimes import get_runtime


def test_doctor_reads_this_machines_cpu_and_runtimes_and_the_targets_it_stands_in_for():
    result = edgekd("doctor", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["cpu"]["isa"] == detect_cpu().to_dict()["isa"]
    assert facts["runtimes"]["onnxruntime"]["version"] == metadata.version("onnxruntime")
    assert facts["runtimes"]["openvino"]["available"]
    tensorrt = get_runtime("tensorrt").unavailable_reason()
    assert facts["runtimes"]["tensorrt"].get("reason") == tensorrt
    x86 = platform.machine() in ("x86_64", "AMD64")
    assert not facts["targets"]["jetson-orin"]["here"]
    if x86:  # onnxruntime and openvino are installed (above): the CPU target runs here
        assert facts["targets"]["x86-cpu"] == {"here": True, "reason": None}
        assert facts["targets"]["jetson-orin"]["reason"].startswith("this machine is x86_64")
    assert (facts["jetson"] is None) == (not L4T_RELEASE.is_file())


def test_doctor_prints_the_machine_then_runtimes_and_targets_as_tables():
    result = edgekd("doctor")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CPU: ")
    assert "onnxruntime" in result.stdout and "x86-cpu-avx2" in result.stdout


def test_doctor_runs_where_torch_is_not_installed():
    blocked = "import sys; sys.modules['torch'] = None; from edgekd.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", blocked, "doctor", "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cuda_device"] is None
