"""Isolated-anion descriptors of a structure (seed 003): bonding, site symmetry, spacing, Ewald.

Structure only (no trajectory). For every anion site of the input structure:

* ``bonded`` / ``bonded_to`` — the rule of the pinned-anion control
  (:func:`ionflow.structure.classify_anions`): bonded when within
  (sum of Cordero covalent radii) × 1.2 of a framework cation (any cation except the mobile
  species and s-block metals), isolated otherwise. Same function, same answer as the control.
* ``site_symmetry`` — the Hermann–Mauguin point group of the site (``-43m``, ``3m``, …) in
  the **framework**: the structure with the mobile ions removed. This is seed 003's
  definition ("the point group of the adjacent [SiSe4]4- tetrahedra and other Se_iso is
  adopted to describe its local symmetry"): the mobile ions are disordered in the crystal
  and move in the MD, so an ordered model of them (e.g. ``examples/Li6PS5Cl.cif``, P1) would
  hide the symmetry of the cage. The point group is found from the space-group operations
  of spglib (through pymatgen's ``SpacegroupAnalyzer``, tolerance ``symprec`` Å and
  ``angle_tolerance`` °) that leave the site in place, named by ``spglib.get_pointgroup``;
  spglib's oriented symbol (``.3m``) and the Wyckoff position (multiplicity in the
  conventional cell + letter, e.g. ``4d``) are given too, and the same point group with the
  mobile ions kept (``site_symmetry_with_mobile``) for ordered structures where it matters.
* ``nearest_isolated_anion_distance_a`` — periodic distance to the nearest *other* isolated
  anion (a periodic image of the site itself counts: it is another atom of the crystal);
  null when there is none. The top level gives, per element, the shortest distance between
  isolated anions of that element (``isolated_anion_spacing_a``; seed 003's ≤ ~5.2 Å for Se
  means face-sharing cages).
* ``ewald_site_energy_ev`` — pymatgen ``EwaldSummation`` site energy (the site's share of the
  total: the site energies sum to ``ewald_total_energy_ev``) with formal oxidation states:
  given; else the most probable charge-balanced guess from the composition (pymatgen
  ``Composition.oxi_state_guesses``, one state per element); else pymatgen's ``BVAnalyzer``
  for structures up to :data:`MAX_BV_SITES` sites. The composition guess comes first because
  it is fast and right on these conductors, where BVAnalyzer is slow and can be wrong on
  distorted cells (6 s on the 52-atom P1 Li6PS5Cl; 17 s and P4+/S- mixtures on a 416-atom
  Li6PS5I MD frame). ``oxidation_states_source`` says which. Null (with ``ewald_note``) when
  no charge-neutral assignment is found.

Top level: ``isolated_fraction`` (isolated / all anion sites) and ``groups`` (polyanion formula
→ count, e.g. ``{"PS4": 4}``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, Field
from pymatgen.core import Element, Structure

from ionflow.errors import UserInputError
from ionflow.structure import classify_anions

__all__ = [
    "AnionReport",
    "AnionSite",
    "describe_anions",
    "describe_report",
    "parse_oxidation_states",
]

#: Default symmetry tolerance, Å (pymatgen/spglib ``symprec``).
DEFAULT_SYMPREC = 0.01
#: Default angle tolerance, degrees (pymatgen's default).
DEFAULT_ANGLE_TOLERANCE = 5.0
#: BVAnalyzer is tried only up to this many sites (it scales badly; see the module docstring).
MAX_BV_SITES = 200
#: Ewald site energies are skipped above this many sites (N² matrices).
MAX_EWALD_SITES = 4000

#: Hermann–Mauguin → Schoenflies for the 32 crystallographic point groups.
SCHOENFLIES = {
    "1": "C1", "-1": "Ci", "2": "C2", "m": "Cs", "2/m": "C2h", "222": "D2", "mm2": "C2v",
    "mmm": "D2h", "4": "C4", "-4": "S4", "4/m": "C4h", "422": "D4", "4mm": "C4v",
    "-42m": "D2d", "4/mmm": "D4h", "3": "C3", "-3": "C3i", "32": "D3", "3m": "C3v",
    "-3m": "D3d", "6": "C6", "-6": "C3h", "6/m": "C6h", "622": "D6", "6mm": "C6v",
    "-6m2": "D3h", "6/mmm": "D6h", "23": "T", "m-3": "Th", "432": "O", "-43m": "Td",
    "m-3m": "Oh",
}  # fmt: skip


class AnionSite(BaseModel):
    """Descriptors of one anion site."""

    index: int = Field(description="0-based position of the site in the input structure")
    element: str = Field(description="Element symbol")
    bonded: bool = Field(description="Bonded to a framework cation (pinned-control rule)")
    bonded_to: str | None = Field(
        description="Element of the framework cation(s) it is bonded to (comma-joined if "
        "several elements), null when isolated"
    )
    bonded_to_indices: list[int] = Field(
        default_factory=list, description="Site indices of those framework cations"
    )
    site_symmetry: str = Field(
        description="Hermann–Mauguin point group of the site in the framework (mobile ions "
        "removed), e.g. '-43m'"
    )
    site_symmetry_schoenflies: str = Field(description="The same point group, Schoenflies (Td)")
    site_symmetry_oriented: str = Field(
        description="spglib's oriented site-symmetry symbol in the framework, e.g. '.3m'"
    )
    wyckoff: str = Field(
        description="Wyckoff position in the framework: multiplicity in the conventional "
        "cell + letter, e.g. '4d' (spglib's standard setting)"
    )
    site_symmetry_with_mobile: str = Field(
        description="Point group of the site with the mobile ions kept (as ordered in the input)"
    )
    nearest_isolated_anion_distance_a: float | None = Field(
        description="Periodic distance to the nearest other isolated anion, Å (null if none)"
    )
    nearest_isolated_anion_element: str | None = Field(
        description="Element of that nearest isolated anion"
    )
    oxidation_state: float | None = Field(description="Formal charge used for the Ewald sum, e")
    ewald_site_energy_ev: float | None = Field(
        description="pymatgen EwaldSummation site energy, eV (null: see ewald_note)"
    )


class AnionReport(BaseModel):
    """Isolated-anion descriptors of one structure (module docstring)."""

    schema_version: str = Field("1", description="Schema version of this result kind")
    formula: str = Field(description="Composition of the structure analysed")
    n_sites: int = Field(description="Sites in the structure")
    mobile_species: str = Field(description="Mobile ion, excluded from the framework")
    n_anions: int = Field(description="Anion sites")
    n_isolated: int = Field(description="Isolated anion sites")
    isolated_fraction: float = Field(description="Isolated / all anion sites")
    groups: dict[str, int] = Field(description="Polyanion formula → count, e.g. {'PS4': 4}")
    isolated_elements: list[str] = Field(description="Elements with an isolated site")
    bonded_elements: list[str] = Field(description="Elements with a bonded site")
    isolated_anion_spacing_a: dict[str, float] = Field(
        description="Per element: shortest periodic distance between two isolated anions of "
        "that element (periodic images included), Å"
    )
    bonding_method: str = Field(
        description="How anions and bonds were decided (pinned-control rule)"
    )
    symprec: float = Field(description="spglib distance tolerance used, Å")
    angle_tolerance_deg: float = Field(description="spglib angle tolerance used, degrees")
    site_symmetry_method: str = Field(description="How site symmetries were found")
    framework_space_group: str = Field(
        description="Space group of the framework (mobile ions removed), e.g. 'F-43m (216)'"
    )
    space_group: str = Field(description="Space group of the whole structure as given")
    oxidation_states: dict[str, float] | None = Field(
        description="Formal oxidation state per element used for the Ewald sum"
    )
    oxidation_states_source: str = Field(
        description="'given', 'from the structure (…)', 'composition guess (…)', 'bond valence (…)' or 'none (…)'"
    )
    ewald_total_energy_ev: float | None = Field(
        description="pymatgen EwaldSummation total energy of the cell, eV"
    )
    ewald_energy_by_element_ev: dict[str, float] | None = Field(
        None,
        description="Sum of the Ewald site energies of each element, eV (their sum is "
        "ewald_total_energy_ev)",
    )
    ewald_note: str | None = Field(None, description="Why the Ewald energies are null, if they are")
    warnings: list[str] = Field(default_factory=list, description="Things to check")
    anions: list[AnionSite] = Field(description="One entry per anion site, in input order")

    def describe(self) -> str:
        """One line for reports."""
        return describe_report(self)


# --------------------------------------------------------------------------------------------


def parse_oxidation_states(text: str) -> dict[str, float]:
    """``"Li=1,P=5,S=-2,Cl=-1"`` → ``{"Li": 1.0, …}`` (one-line UserInputError otherwise)."""
    out: dict[str, float] = {}
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise UserInputError(
            f"--oxidation-states is empty; expected e.g. Li=1,P=5,S=-2,Cl=-1, got {text!r}"
        )
    for item in items:
        m = re.fullmatch(r"([A-Za-z]{1,3})\s*[=:]\s*([+-]?\d+(?:\.\d*)?)\s*([+-]?)", item)
        if not m:
            raise UserInputError(
                f"--oxidation-states: {item!r} is not ELEMENT=CHARGE (e.g. S=-2); "
                f"expected e.g. Li=1,P=5,S=-2,Cl=-1"
            )
        symbol, number, trailing = m.groups()
        if not Element.is_valid_symbol(symbol):
            raise UserInputError(f"--oxidation-states: {symbol!r} is not an element symbol")
        value = float(number)
        if trailing == "-":  # "S=2-" written the chemist's way
            value = -value
        if not math.isfinite(value):
            raise UserInputError(f"--oxidation-states: {item!r} is not a finite number")
        if symbol in out:
            raise UserInputError(f"--oxidation-states gives {symbol} twice")
        out[symbol] = value
    return out


def _framework(structure: Structure, mobile_species: str) -> tuple[Structure, np.ndarray]:
    keep = np.array([i for i, s in enumerate(structure) if s.specie.symbol != mobile_species])
    sub = Structure.from_sites([structure[int(i)] for i in keep]) if keep.size else None
    return sub, keep


def _site_symmetries(structure: Structure, symprec: float, angle_tolerance: float):
    """(space group label, per site: (point group HM, oriented symbol, wyckoff)) by spglib."""
    import spglib
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
        data = sga.get_symmetry_dataset()
    if data is None:
        raise UserInputError(f"spglib found no symmetry at symprec {symprec:g} Å")
    label = f"{data.international} ({data.number})"
    frac = structure.frac_coords
    lat = structure.lattice.matrix
    rot = np.asarray(data.rotations)
    trans = np.asarray(data.translations)
    orbit_size = Counter(int(x) for x in data.equivalent_atoms)
    ratio = abs(np.linalg.det(np.asarray(data.std_lattice))) / structure.volume
    tol = max(3 * symprec, 1e-5)
    out = []
    for i, x in enumerate(frac):
        images = np.einsum("kij,j->ki", rot, x) + trans - x
        images -= np.round(images)
        fixed = np.linalg.norm(images @ lat, axis=1) <= tol
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
            pg = spglib.get_pointgroup(rot[fixed])
        hm = pg[0].strip() if pg else "1"
        mult = int(round(orbit_size[int(data.equivalent_atoms[i])] * ratio))
        out.append((hm, str(data.site_symmetry_symbols[i]), f"{mult}{data.wyckoffs[i]}"))
    return label, out


def _guess_oxidation_states(
    structure: Structure, elements: list[str]
) -> tuple[dict[str, float] | None, str, np.ndarray | None]:
    """(per-element states or None, source, per-site states or None)."""
    comp = structure.composition
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            guesses = comp.oxi_state_guesses(max_sites=-1)
    except Exception:  # noqa: BLE001 (pymatgen raises several types on odd compositions)
        guesses = ()
    if guesses:
        states = {el: float(guesses[0][el]) for el in elements}
        if all(float(v).is_integer() for v in states.values()):
            return (
                states,
                "composition guess (pymatgen Composition.oxi_state_guesses, most probable)",
                None,
            )
    if len(structure) <= MAX_BV_SITES:
        from pymatgen.analysis.bond_valence import BVAnalyzer

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                valences = np.asarray(BVAnalyzer().get_valences(structure), dtype=float)
        except Exception:  # noqa: BLE001 (BVAnalyzer raises ValueError and others)
            valences = None
        if valences is not None:
            per_el: dict[str, set[float]] = {}
            for site, v in zip(structure, valences, strict=True):
                per_el.setdefault(site.specie.symbol, set()).add(float(v))
            states = {el: next(iter(v)) for el, v in per_el.items() if len(v) == 1}
            return (states or None), "bond valence (pymatgen BVAnalyzer)", valences
        return None, "none (no charge-balanced composition guess; BVAnalyzer failed)", None
    return (
        None,
        f"none (no charge-balanced composition guess; BVAnalyzer not tried above "
        f"{MAX_BV_SITES} sites)",
        None,
    )


def _nearest_isolated(
    structure: Structure, anion_indices: list[int], isolated: list[int]
) -> dict[int, tuple[float, str]]:
    """anion index → (distance to the nearest other isolated anion, its element)."""
    if not isolated:
        return {}
    sub = Structure.from_sites([structure[i] for i in isolated])
    # a sphere as large as the cell's longest diagonal always holds an image of every site
    r_max = float(np.linalg.norm(structure.lattice.matrix.sum(axis=0))) + 1.0
    r_max = max(r_max, *(np.linalg.norm(v) for v in structure.lattice.matrix)) * 2
    out: dict[int, tuple[float, str]] = {}
    for i in anion_indices:
        r = 6.0
        while True:
            found = [
                n for n in sub.get_sites_in_sphere(structure[i].coords, r) if n.nn_distance > 1e-6
            ]
            if found or r >= r_max:
                break
            r *= 2
        if found:
            best = min(found, key=lambda n: n.nn_distance)
            out[i] = (float(best.nn_distance), best.specie.symbol)
    return out


def describe_anions(
    structure: Structure,
    mobile_species: str = "Li",
    oxidation_states: Mapping[str, float] | None = None,
    symprec: float = DEFAULT_SYMPREC,
    *,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    bond_tolerance: float = 1.2,
) -> AnionReport:
    """Isolated-anion descriptors of ``structure`` (see the module docstring).

    Parameters
    ----------
    structure
        An ordered structure (a relaxed cell, a supercell, or an MD frame).
    mobile_species
        Element symbol of the diffusing ion (excluded from the framework).
    oxidation_states
        Element → formal charge for the Ewald sum, every element of the structure; when
        given, their signs also decide which elements are anions. ``None``: guessed.
    symprec
        spglib distance tolerance, Å.

    Raises
    ------
    UserInputError
        Mobile species absent, no anions, bad oxidation states, bad tolerances.
    """
    if not (math.isfinite(symprec) and symprec > 0):
        raise UserInputError(f"symprec must be > 0 Å, got {symprec}")
    if not (math.isfinite(angle_tolerance) and angle_tolerance > 0):
        raise UserInputError(f"angle tolerance must be > 0°, got {angle_tolerance}")
    structure = structure.copy()
    if not structure.is_ordered:
        raise UserInputError("the structure has partially occupied sites: order it first")
    carried = [getattr(site.specie, "oxi_state", None) for site in structure]
    structure.remove_oxidation_states()
    symbols = [s.specie.symbol for s in structure]
    elements = sorted(set(symbols))
    notes: list[str] = []
    from_file = (
        oxidation_states is None
        and all(o is not None for o in carried)
        and any(o != 0 for o in carried)
    )
    given = oxidation_states is not None or from_file
    if from_file:
        site_oxi = np.array(carried, dtype=float)
        oxi = {}
        for s, o in zip(symbols, site_oxi, strict=True):
            oxi.setdefault(s, float(o))
        decorated = structure.copy()
        decorated.add_oxidation_state_by_site(list(site_oxi))
        oxi_source = "from the structure (its sites carry oxidation states)"
        cls = classify_anions(decorated, mobile_species, bond_tolerance=bond_tolerance)
    elif given:
        oxi = {str(k): float(v) for k, v in oxidation_states.items()}
        missing = [e for e in elements if e not in oxi]
        extra = sorted(set(oxi) - set(elements))
        if missing:
            raise UserInputError(
                f"oxidation states missing for {', '.join(missing)} (elements of "
                f"{structure.composition.formula}: {', '.join(elements)})"
            )
        if extra:
            raise UserInputError(
                f"oxidation states given for {', '.join(extra)}, which is not in the structure "
                f"({', '.join(elements)})"
            )
        oxi_source = "given"
        site_oxi = np.array([oxi[s] for s in symbols])
        decorated = structure.copy()
        decorated.add_oxidation_state_by_element(oxi)
        # the signs decide the anions (the pinned control's rule for charged structures)
        cls = classify_anions(decorated, mobile_species, bond_tolerance=bond_tolerance)
    else:
        # exactly what the pinned control does with an undecorated structure
        cls = classify_anions(structure, mobile_species, bond_tolerance=bond_tolerance)
    anion_idx = sorted(cls.anion_site_species)
    if not anion_idx:
        raise UserInputError(
            f"no anions found in {structure.composition.formula} ({cls.method.split(';')[0]}); "
            "give --oxidation-states to say which elements are anions"
        )
    if not given:
        oxi, oxi_source, bv = _guess_oxidation_states(structure, elements)
        if bv is not None:
            site_oxi = bv
        elif oxi is not None:
            site_oxi = np.array([oxi[s] for s in symbols])
        else:
            site_oxi = None

    # ---- bonding (pinned-control rule) ----
    bonded_to: dict[int, list[int]] = {}
    for g in cls.groups:
        for lig in g.ligand_indices:
            bonded_to.setdefault(lig, []).append(g.centre_index)
    isolated = list(cls.isolated_indices)

    # ---- site symmetry: framework (mobile removed) and full structure ----
    framework, keep = _framework(structure, mobile_species)
    fw_label, fw_sym = _site_symmetries(framework, symprec, angle_tolerance)
    fw_pos = {int(orig): k for k, orig in enumerate(keep)}
    full_label, full_sym = _site_symmetries(structure, symprec, angle_tolerance)

    # ---- spacing ----
    nearest = _nearest_isolated(structure, anion_idx, isolated)
    spacing: dict[str, float] = {}
    for el in sorted({symbols[i] for i in isolated}):
        same = [i for i in isolated if symbols[i] == el]
        sub_near = _nearest_isolated(structure, same, same)
        if sub_near:
            spacing[el] = min(d for d, _ in sub_near.values())

    # ---- Ewald ----
    ewald_total = None
    site_e = None
    ewald_note = None
    if site_oxi is None:
        ewald_note = f"no oxidation states ({oxi_source}); give --oxidation-states"
    elif len(structure) > MAX_EWALD_SITES:
        ewald_note = f"{len(structure)} sites > {MAX_EWALD_SITES}: Ewald site energies skipped"
    else:
        net = float(np.sum(site_oxi))
        if abs(net) > 1e-6:
            ewald_note = (
                f"the cell is not charge-neutral with these oxidation states (net {net:+g} e): "
                "site energies of a charged cell are not defined"
            )
        else:
            from pymatgen.analysis.ewald import EwaldSummation

            decorated = structure.copy()
            decorated.add_oxidation_state_by_site(list(site_oxi))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ew = EwaldSummation(decorated)
                matrix = ew.total_energy_matrix
                ewald_total = float(ew.total_energy)
            site_e = matrix.sum(axis=0)
    if site_oxi is not None:
        wrong = sorted(
            {symbols[i] for i in anion_idx if site_oxi[i] > 0}
            | {
                s
                for i, s in enumerate(symbols)
                if i not in cls.anion_site_species and site_oxi[i] < 0
            }
        )
        if wrong:
            notes.append(
                f"the oxidation states ({oxi_source}) disagree with the anion choice for "
                f"{', '.join(wrong)}; give --oxidation-states to decide"
            )

    # ---- structure sanity: sites much closer than bonded atoms ----
    from ase.data import covalent_radii

    ci, ni, _, dist = structure.get_neighbor_list(1.6)
    if len(dist):
        r = np.array([covalent_radii[Element(s).Z] for s in symbols])
        close = dist < 0.6 * (r[ci] + r[ni])
        if np.any(close):
            k = int(np.flatnonzero(close)[np.argmin(dist[close])])
            notes.append(
                f"sites {ci[k]} ({symbols[ci[k]]}) and {ni[k]} ({symbols[ni[k]]}) are only "
                f"{dist[k]:.2f} Å apart: partially occupied sites written as fully occupied? "
                "Bonding and Ewald energies of such a cell are not meaningful"
            )

    sites = []
    for i in anion_idx:
        hm, oriented, wyck = fw_sym[fw_pos[i]]
        centres = sorted(bonded_to.get(i, []))
        near = nearest.get(i)
        sites.append(
            AnionSite(
                index=i,
                element=symbols[i],
                bonded=bool(centres),
                bonded_to=",".join(sorted({symbols[c] for c in centres})) or None,
                bonded_to_indices=centres,
                site_symmetry=hm,
                site_symmetry_schoenflies=SCHOENFLIES.get(hm, hm),
                site_symmetry_oriented=oriented,
                wyckoff=wyck,
                site_symmetry_with_mobile=full_sym[i][0],
                nearest_isolated_anion_distance_a=None if near is None else near[0],
                nearest_isolated_anion_element=None if near is None else near[1],
                oxidation_state=None if site_oxi is None else float(site_oxi[i]),
                ewald_site_energy_ev=None if site_e is None else float(site_e[i]),
            )
        )
    return AnionReport(
        formula=structure.composition.formula,
        n_sites=len(structure),
        mobile_species=mobile_species,
        n_anions=len(anion_idx),
        n_isolated=len(isolated),
        isolated_fraction=len(isolated) / len(anion_idx),
        groups=dict(sorted(Counter(g.label for g in cls.groups).items())),
        isolated_elements=list(cls.isolated_species),
        bonded_elements=list(cls.bonded_species),
        isolated_anion_spacing_a=spacing,
        bonding_method=cls.method,
        symprec=symprec,
        angle_tolerance_deg=angle_tolerance,
        site_symmetry_method=(
            f"point group of the space-group operations (spglib via pymatgen "
            f"SpacegroupAnalyzer, symprec {symprec:g} Å, angle tolerance {angle_tolerance:g}°) "
            f"that leave the site in place, named by spglib.get_pointgroup; in the framework "
            f"= the structure without {mobile_species} (seed 003: the anion's environment of "
            f"polyanions and other isolated anions)"
        ),
        framework_space_group=fw_label,
        space_group=full_label,
        oxidation_states=oxi,
        oxidation_states_source=oxi_source,
        ewald_total_energy_ev=ewald_total,
        ewald_energy_by_element_ev=None
        if site_e is None
        else {
            el: float(sum(site_e[i] for i, s in enumerate(symbols) if s == el)) for el in elements
        },
        ewald_note=ewald_note,
        warnings=notes,
        anions=sites,
    )


def describe_report(report: AnionReport) -> str:
    """One line: isolated share, per isolated element its symmetry, spacing and Ewald energy."""
    parts = [
        f"{report.n_isolated}/{report.n_anions} anions isolated "
        f"({100 * report.isolated_fraction:.0f} %)"
    ]
    for el in report.isolated_elements:
        sites = [a for a in report.anions if a.element == el and not a.bonded]
        syms = sorted({f"{a.site_symmetry} {a.wyckoff}" for a in sites})
        text = f"{el}: {', '.join(syms)}"
        if el in report.isolated_anion_spacing_a:
            text += f", {el}–{el} {report.isolated_anion_spacing_a[el]:.2f} Å"
        energies = [a.ewald_site_energy_ev for a in sites if a.ewald_site_energy_ev is not None]
        if energies:
            text += f", Ewald {np.mean(energies):.2f} eV"
        parts.append(text)
    if report.groups:
        parts.append("groups " + ", ".join(f"{k}×{v}" for k, v in report.groups.items()))
    return "; ".join(parts)
