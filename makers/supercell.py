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
    pinned_sites
        Input-cell site indices to pin, decided when the campaign was validated (what
        ``ionflow validate`` showed). When given, their images in the supercell are pinned
        — a relaxation that stretched a bond past the bonding cutoff must not silently
        change the control — and the fresh classification of the supercell is reported
        next to it. ``None`` → classify the (relaxed) supercell.
    """

    name: str = "supercell"
    min_width_a: float = 10.0
    mobile_species: str = "Li"
    pinned_control: str | list[str] = "auto"
    pinned_sites: list[int] | None = None

    @job
    def make(self, structure):
        """Output: a :class:`~ionflow.outputs.SupercellOutput` document."""
        from ionflow.errors import UserInputError
        from ionflow.outputs import SupercellOutput
        from ionflow.structure import classify_anions, make_supercell, pinned_indices

        tagged = structure.copy()
        tagged.add_site_property("ionflow_parent", list(range(len(structure))))
        sc, matrix = make_supercell(tagged, self.min_width_a)
        parents = sc.site_properties["ionflow_parent"]
        sc.remove_site_property("ionflow_parent")
        anions = classify_anions(sc, self.mobile_species)
        pinned, reason = pinned_indices(sc, self.mobile_species, self.pinned_control)
        notes = []
        if self.pinned_sites is not None:
            planned = set(self.pinned_sites)
            fresh = pinned
            pinned = [i for i, p in enumerate(parents) if p in planned]
            if sorted(fresh) != pinned:
                notes.append(
                    f"pinned the {len(pinned)} planned sites; a fresh classification of the "
                    f"relaxed supercell would pin {len(fresh)} ({anions.summary()})"
                )
        try:  # isolated-anion descriptors of the (relaxed) input cell: seed 003's factors
            from ionflow.analysis.anions import describe_anions

            descriptors = describe_anions(structure, self.mobile_species).model_dump(mode="json")
        except UserInputError as exc:  # no anions, or nothing to say: not a failure
            descriptors, notes = None, [*notes, f"no anion descriptors: {exc}"]
        return SupercellOutput(
            structure=sc,
            anion_descriptors=descriptors,
            matrix=[[int(x) for x in row] for row in matrix],
            n_atoms=len(sc),
            pinned_indices=[int(i) for i in pinned],
            pinned_reason=reason,
            anions=anions.model_dump(mode="json"),
            anion_summary=anions.summary(),
            notes=notes,
        ).to_output()
