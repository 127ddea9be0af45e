"""The engines ionflow knows, in one table: the names ``workflows.yaml`` accepts, what runs
each (an ML potential through ASE, or VASP), the package it needs and its atomate2 name.

Every list of engine names elsewhere (the spec's allowed values, the ML engines the
campaign builds ASE makers for, the calculators :mod:`ionflow.potentials` makes, the
relax maker's atomate2 force fields) derives from :data:`ENGINES`. Adding a potential is
one row here plus its calculator factory in :mod:`ionflow.potentials`.

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


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("chgnet", "ml", "CHGNet", "chgnet", "CHGNet"),
        Engine("mace", "ml", "MACE-MP-0", "mace-torch", "MACE-MP-0"),
        Engine("m3gnet", "ml", "M3GNet", "matgl", "M3GNet"),
        Engine("sevennet", "ml", "SevenNet", "sevenn", "SevenNet"),
        Engine("vasp", "vasp", "VASP"),
        Engine("toy", "ml", "toy Morse potential", test_only=True),
    )
}

#: Engines that run MD (and relaxations) through an ASE calculator.
ML_ENGINES: tuple[str, ...] = tuple(n for n, e in ENGINES.items() if e.kind == "ml")
#: Names ``engine.md`` accepts.
MD_ENGINES: tuple[str, ...] = tuple(ENGINES)
#: Names ``engine.relax`` accepts ("none" skips the relaxation).
RELAX_ENGINES: tuple[str, ...] = (*ENGINES, "none")
