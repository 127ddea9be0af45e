"""Relaxation makers: ML potentials through atomate2's force-field makers; the toy potential
through a small ASE relaxation (atomate2 does not know it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jobflow import Maker, job

from ionflow.engines import ENGINES

#: ionflow engine name → atomate2 force_field_name
ATOMATE2_FORCE_FIELDS = {
    n: e.atomate2_force_field for n, e in ENGINES.items() if e.atomate2_force_field
}


@dataclass
class RelaxMaker(Maker):
    """Relax ions (and the cell) of a structure with an ML potential.

    Parameters
    ----------
    name
        Job name.
    engine
        ionflow engine name (chgnet, mace, m3gnet, sevennet, toy).
    fmax_ev_a
        Force convergence, eV/Å.
    max_steps
        Optimiser steps.
    relax_cell
        Relax the cell too.
    calculator_kwargs
        Options of :func:`ionflow.potentials.get_calculator` (``engine.model``,
        ``engine.device``). With any, or for an engine atomate2 does not know, the
        relaxation runs through ionflow's own calculator (:func:`relax_with_ase`), so that it
        uses the same model file as the MD.
    """

    name: str = "relax"
    engine: str = "chgnet"
    fmax_ev_a: float = 0.05
    max_steps: int = 500
    relax_cell: bool = True
    calculator_kwargs: dict = field(default_factory=dict)

    def make(self, structure):
        """Return a job whose ``output.structure`` is the relaxed structure."""
        if self.engine in ATOMATE2_FORCE_FIELDS and not self.calculator_kwargs:
            from atomate2.forcefields.jobs import ForceFieldRelaxMaker

            maker = ForceFieldRelaxMaker(
                name=self.name,
                force_field_name=ATOMATE2_FORCE_FIELDS[self.engine],
                relax_cell=self.relax_cell,
                steps=self.max_steps,
                relax_kwargs={"fmax": self.fmax_ev_a},
            )
            return maker.make(structure)
        relax = relax_with_ase(
            structure,
            self.engine,
            self.fmax_ev_a,
            self.max_steps,
            self.relax_cell,
            calculator_kwargs=dict(self.calculator_kwargs) or None,
        )
        relax.name = self.name
        return relax


@job
def relax_with_ase(
    structure,
    engine: str,
    fmax_ev_a: float,
    max_steps: int,
    relax_cell: bool,
    calculator_kwargs: dict | None = None,
):
    """FIRE relaxation (with a FrechetCellFilter when ``relax_cell``) with ionflow's own
    calculator (engines atomate2 does not know, or a given model/device)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    from ionflow.potentials import get_calculator, potential_provenance

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = get_calculator(engine, **(calculator_kwargs or {}))
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = FIRE(target, logfile=None)
    converged = bool(opt.run(fmax=fmax_ev_a, steps=max_steps))
    return {
        "structure": AseAtomsAdaptor.get_structure(atoms),
        "energy_ev": float(atoms.get_potential_energy()),
        "converged": converged,
        "steps": int(opt.nsteps),
        "engine": engine,
        "potential": potential_provenance(engine, **(calculator_kwargs or {})),
    }
