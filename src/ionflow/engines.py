"""The engines ionflow knows, in one table: the names ``workflows.yaml`` accepts, what runs
each (an ML potential through ASE, or VASP), the package it needs and its atomate2 name.

Every list of engine names elsewhere (the spec's allowed values, the ML engines the
campaign builds ASE makers for, the calculators :mod:`ionflow.potentials` makes, the
relax maker's atomate2 force fields, the ``engine.model`` variant names and the
``engine.device`` support the spec checks, the missing-package hint) derives from
:data:`ENGINES`. Adding a potential is one row here plus its calculator factory in
:mod:`ionflow.potentials`.

Pure data: no heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Engine:
    """One engine."""

    name: str  # the name in workflows.yaml
    kind: Literal["ml", "vasp"]  # ASE calculator + ionflow MD, or VASP (atomate2)
    display: str  # how papers write it
    package: str | None = None  # the pip package an ML potential needs (None: built in)
    atomate2_force_field: str | None = None  # atomate2's force_field_name (relaxation)
    test_only: bool = False  # not a model of any material (pipeline tests)
    #: variant names ``engine.model`` accepts besides a file path (the first is the default;
    #: empty: the engine takes no model)
    models: tuple[str, ...] = ()
    #: whether ``engine.device`` (auto | cpu | cuda) reaches its calculator
    device: bool = False
    #: variants whose weights ship inside the package (usable with no network; None: all)
    offline_models: tuple[str, ...] | None = None
    #: the Python module that ``import`` needs (the package's import name)
    module: str | None = None

    @property
    def default_model(self) -> str | None:
        """The variant used when ``engine.model`` is not given."""
        return self.models[0] if self.models else None

    @property
    def install_hint(self) -> str:
        """What to run when the package is missing (``pip install <package>``)."""
        return f"pip install {self.package}" if self.package else ""


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine(
            "chgnet", "ml", "CHGNet", "chgnet", "CHGNet",
            models=("0.3.0", "0.2.0", "r2scan"), device=True, module="chgnet",
        ),
        Engine(
            "mace", "ml", "MACE-MP-0", "mace-torch", "MACE-MP-0",
            models=(
                "medium", "small", "large", "small-0b", "medium-0b", "small-0b2",
                "medium-0b2", "large-0b2", "medium-0b3", "medium-mpa-0", "medium-omat-0",
            ),
            device=True, offline_models=(), module="mace",
        ),
        Engine(
            "m3gnet", "ml", "M3GNet", "matgl", "M3GNet",
            models=("M3GNet-MP-2021.2.8-PES",), module="matgl",
        ),
        Engine(
            "sevennet", "ml", "SevenNet", "sevenn", "SevenNet",
            models=(
                "7net-0", "7net-0_11jul2024", "7net-0_22may2024", "7net-l3i5",
                "7net-mf-ompa", "7net-omat", "7net-omni",
            ),
            device=True,
            offline_models=("7net-0", "7net-0_11jul2024", "7net-0_22may2024", "7net-l3i5"),
            module="sevenn",
        ),
        Engine(
            "mattersim", "ml", "MatterSim", "mattersim", "MatterSim",
            models=("MatterSim-v1.0.0-1M.pth", "MatterSim-v1.0.0-5M.pth"),
            device=True, offline_models=(), module="mattersim",
        ),
        Engine(
            "orb", "ml", "Orb", "orb-models", None,
            models=(
                "orb-v3-conservative-inf-omat", "orb-v3-conservative-20-omat",
                "orb-v3-direct-20-omat", "orb-v3-conservative-inf-mpa", "orb-v2",
            ),
            device=True, offline_models=(), module="orb_models",
        ),
        Engine(
            "fairchem", "ml", "FAIRChem (UMA)", "fairchem-core", None,
            models=("uma-s-1p1", "uma-s-1", "uma-m-1p1"),
            device=True, offline_models=(), module="fairchem",
        ),
        Engine("vasp", "vasp", "VASP"),
        Engine("toy", "ml", "toy Morse potential", test_only=True),
    )
}  # fmt: skip

#: Engines that run MD (and relaxations) through an ASE calculator.
ML_ENGINES: tuple[str, ...] = tuple(n for n, e in ENGINES.items() if e.kind == "ml")
#: Names ``engine.md`` accepts.
MD_ENGINES: tuple[str, ...] = tuple(ENGINES)
#: Names ``engine.relax`` accepts ("none" skips the relaxation).
RELAX_ENGINES: tuple[str, ...] = (*ENGINES, "none")
#: Names ``engine.device`` accepts ("auto": cuda when torch sees a GPU, else cpu).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
