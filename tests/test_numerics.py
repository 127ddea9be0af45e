"""``ionflow.potentials.numerical_environment``: what MD outputs record so that two runs of
the same job can be compared (MD is chaotic: the BLAS kernel alone changes the last bits).

Checked against independent truth: OpenBLAS honours ``OPENBLAS_CORETYPE`` and
``OPENBLAS_NUM_THREADS`` (its documented switches), ``lscpu`` names the CPU, numpy's build
configuration names its BLAS.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

_STEERING = ("OPENBLAS_", "GOTO", "MKL_", "OMP_", "KMP_", "BLIS_", "NPY_", "ATLAS_")


def environment_in_subprocess(**extra: str) -> dict:
    """numerical_environment() of a fresh interpreter with only ``extra`` steering BLAS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STEERING)}
    env.update(extra)
    code = (
        "import json; from ionflow.potentials import numerical_environment as f; "
        "print(json.dumps(f()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 OpenBLAS core names")
def test_blas_kernel_follows_openblas_coretype():
    haswell = environment_in_subprocess(OPENBLAS_CORETYPE="Haswell")
    sandy = environment_in_subprocess(OPENBLAS_CORETYPE="Sandybridge")
    assert haswell["blas"]["api"] == "openblas"
    assert haswell["blas"]["architecture"] == "Haswell"
    assert sandy["blas"]["architecture"] == "Sandybridge"
    assert haswell["env"] == {"OPENBLAS_CORETYPE": "Haswell"}
    assert sandy["env"] == {"OPENBLAS_CORETYPE": "Sandybridge"}
    # numpy's own build configuration names the same BLAS
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    assert "openblas" in blas["name"] and blas["version"] == haswell["blas"]["version"]


def test_blas_threads_follow_openblas_num_threads():
    one = environment_in_subprocess(OPENBLAS_NUM_THREADS="1")
    two = environment_in_subprocess(OPENBLAS_NUM_THREADS="2")
    assert one["blas"]["threads"] == 1 and two["blas"]["threads"] == 2
    assert one["env"] == {"OPENBLAS_NUM_THREADS": "1"}


def test_cpu_and_versions():
    env = environment_in_subprocess()
    assert env["numpy"] == np.__version__
    assert env["machine"] == platform.machine()
    assert env["env"] == {}
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln]
        if names:
            assert env["cpu"] == names[0]
    assert "torch" not in env  # only when a potential loaded it


def test_torch_threads_recorded_once_loaded():
    torch = pytest.importorskip("torch")
    from ionflow.potentials import numerical_environment

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert numerical_environment()["torch"] == {"version": torch.__version__, "threads": 1}
    finally:
        torch.set_num_threads(before)
