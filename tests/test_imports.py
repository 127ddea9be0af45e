"""Import boundaries: what a module pulls in when imported alone, in a fresh interpreter.

* FireWorks and jobflow are imported only by the backends (ionflow.backends.fireworks_*,
  fw_tasks) and the makers/flows: the database layer, the spec, the summary schema, the
  analyses and the backend protocol import neither.
* summary (pure) does not import results (the writer side): no cycle between them.
* The FireWorks name of ionflow's firetask, stored in every existing workflow document,
  still resolves.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("fireworks", "jobflow")


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    "module",
    [
        "ionflow.store",
        "ionflow.spec",
        "ionflow.summary",
        "ionflow.analysis",
        "ionflow.names",
        "ionflow.backends",
        "ionflow.backends.base",
        "ionflow.backends.lease",
        "ionflow.results",
        "ionflow.query_index",
        "ionflow.report",
        "ionflow.trajectories",
        "ionflow.cli",
    ],
)
def test_module_imports_neither_fireworks_nor_jobflow(module):
    loaded = _modules_after_import(module)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"import {module} imports {heavy[:5]}"


def test_summary_does_not_import_results():
    loaded = _modules_after_import("ionflow.summary")
    assert "ionflow.results" not in loaded
    assert "ionflow.summary" in loaded


def test_stored_firetask_name_still_resolves():
    """Workflows written before ionflow.backends existed name the firetask
    ``{{ionflow.store.IonflowJobFiretask}}``; FireWorks loads it by that name."""
    code = (
        "from fireworks.utilities.fw_serializers import load_object\n"
        "task = load_object({'_fw_name': '{{ionflow.store.IonflowJobFiretask}}', 'job': None})\n"
        "from ionflow.backends.fw_tasks import IonflowJobFiretask, FIRETASK_FW_NAME\n"
        "assert type(task) is IonflowJobFiretask, type(task)\n"
        "assert task.fw_name == FIRETASK_FW_NAME\n"
        "print(FIRETASK_FW_NAME)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "{{ionflow.store.IonflowJobFiretask}}"


def test_backends_registry_opens_each_backend_by_name():
    from ionflow.backends import BACKENDS, Backend

    for name, target in BACKENDS.items():
        module, _, cls = target.partition(":")
        backend_cls = getattr(__import__(module, fromlist=[cls]), cls)
        assert backend_cls.name == name
        for verb in ("submit", "run", "status", "recover", "close"):
            assert callable(getattr(backend_cls, verb)), (name, verb)
    assert json.dumps(sorted(BACKENDS))  # names are plain strings
    assert Backend is not None
