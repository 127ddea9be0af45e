"""Supercell + anion classification: the structure every MD run of a material starts from."""

from __future__ import annotations

from dataclasses import dataclass

from jobflow import Maker, job


@dataclass
class SupercellMaker(Maker):
    """Build the smallest supercell with every perpendicular width ≥ ``min_width_a`` and decide
    which atoms the pinned control fixes.

    Parameters
    ----------
    name
        Job name.
    min_width_a
        Minimum distance between opposite cell faces, Å.
    mobile_species
        The diffusing element.
    pinned_control
        ``"auto"`` (every bonded anion), ``"off"``, or a list of element symbols.
    """

    name: str = "supercell"
    min_width_a: float = 10.0
    mobile_species: str = "Li"
    pinned_control: str | list[str] = "auto"

    @job
    def make(self, structure):
        """Output: structure, matrix, n_atoms, pinned_indices, pinned_reason, anions."""
        from ionflow.structure import classify_anions, make_supercell, pinned_indices

        sc, matrix = make_supercell(structure, self.min_width_a)
        pinned, reason = pinned_indices(sc, self.mobile_species, self.pinned_control)
        anions = classify_anions(sc, self.mobile_species)
        return {
            "structure": sc,
            "matrix": [[int(x) for x in row] for row in matrix],
            "n_atoms": len(sc),
            "pinned_indices": [int(i) for i in pinned],
            "pinned_reason": reason,
            "anions": anions.model_dump(mode="json"),
            "anion_summary": anions.summary(),
        }
