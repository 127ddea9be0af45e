"""Structures: loading, supercells and the anion classification behind the pinned-anion control.

Everything here is pure code on pymatgen objects (no workflow engine, no database).

Loading
    :func:`load_structure` reads CIF, POSCAR/CONTCAR (``*.vasp``) and pymatgen Structure JSON and
    turns every problem (missing file, unparseable file, partial occupancy, no atoms, overlapping
    atoms) into a one-line :class:`~ionflow.errors.UserInputError` naming the file.

Supercells
    :func:`supercell_matrix` finds the supercell with the fewest primitive cells whose three
    perpendicular widths (distances between opposite faces, :func:`perpendicular_widths`) all
    reach a minimum, which is what bounds the interaction of an atom with its own periodic images
    in MD.  The diagonal answer is only optimal for near-orthogonal cells; for skewed cells (an fcc
    primitive cell, a rhombohedral argyrodite cell) a non-diagonal matrix can be much smaller.

Anion classification
    :func:`classify_anions` splits the anions into *bonded* ones (the ligands of polyanion groups
    such as PS4, GeS4, SiO4, BH4, YCl6: within covalent bonding distance of a non-mobile framework
    cation) and *isolated* ones (bonded to no framework cation: their neighbours are mobile ions
    only, e.g. the S2- and Cl- in Li6PS5Cl, or N3- in Li3N).  :func:`pinned_indices` turns the
    ``pinned_control`` setting into the site indices frozen in the pinned-anion control MD, which
    stops polyanion rotation and shows how much of the ionic conductivity depends on it.

    *How anions are found.*  If the structure carries oxidation states, their signs decide.
    Otherwise the elements are ranked by Pauling electronegativity and the anions are the fewest
    most-electronegative elements whose negative oxidation states can balance the positive ones
    of the remaining elements (pymatgen's tabulated oxidation states, per element as a range).
    This is a charge balance like pymatgen's ``Composition.oxi_state_guesses`` but instant and
    robust: ``oxi_state_guesses`` takes seconds for an off-stoichiometric supercell (one Li
    vacancy in Li24P4S20Cl4: 2 s, and it answers S-1.95), raises on fractional compositions and
    calls LiBH4 B3- / H0.5+, whereas this rule gives S2-/Cl-, S2-/Cl- and H- respectively.

    *How bonding is decided.*  An anion is bonded to a cation when their distance is at most
    ``(r_cov(cation) + r_cov(anion)) * bond_tolerance`` with Cordero covalent radii (as tabulated
    in ``ase.data.covalent_radii``), found with one periodic neighbour search.  This was chosen
    over CrystalNN because it is fast (well under a second for thousands of atoms, CrystalNN
    needs seconds for a hundred), deterministic, and robust on distorted MD snapshots; and the
    answer is insensitive to the tolerance: polyanion bonds (P-S 2.05 Å, Ge-S 2.2 Å, Si-O 1.6 Å)
    are far inside the default cutoff (P-S 2.54 Å) while an isolated anion's nearest framework
    cation is far outside (P...S 4.3 Å in Li6PS5Cl).  Framework cations are all cations except
    the mobile species and the s-block metals (alkali and alkaline-earth), which are ionic
    counter-ions, not polyanion centres.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import stat
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import covalent_radii
from pydantic import BaseModel, Field
from pymatgen.core import Element, Lattice, Structure

from ionflow.errors import UserInputError

__all__ = [
    "AnionClassification",
    "PolyanionGroup",
    "classify_anions",
    "free_degrees_of_freedom",
    "lattice_problem",
    "load_structure",
    "make_supercell",
    "min_supercell_cells",
    "perpendicular_widths",
    "pinned_indices",
    "supercell_matrix",
    "with_selective_dynamics",
]

#: Two atoms closer than this (Å) in an input structure are reported as overlapping.
MIN_INTERATOMIC_DISTANCE_A = 0.5
#: A cell narrower than this (Å, distance between opposite faces) is degenerate.
MIN_CELL_WIDTH_A = 0.1
#: Largest structure file read, bytes (a 20,000-atom CIF is ~2 MB).
MAX_STRUCTURE_FILE_BYTES = 64 * 1024 * 1024

# Relative tolerance when comparing a width with the requested minimum (a 10.0 Å target is
# met by a width of 9.9999999999 Å that is 10 Å up to rounding).
_WIDTH_RTOL = 1e-9

# Upper bound on the number of candidate supercell vectors in the non-diagonal search: with
# fewer candidates than this the search is exhaustive (provably minimal |det|); beyond it only
# the shortest vectors are tried, which keeps the call fast for huge supercells of tiny cells.
_MAX_CANDIDATE_VECTORS = 300


# --------------------------------------------------------------------------------------------
# loading


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (or its type name)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class _NoAtomsError(Exception):
    """A structure file that parses but holds no sites (pymatgen cannot even build it)."""


def _read_json_structure(path: Path) -> Structure:
    """A Structure from a pymatgen JSON file (a Structure dict or a dict with a "structure")."""
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict) and "lattice" not in data and isinstance(data.get("structure"), dict):
        data = data["structure"]
    if not (isinstance(data, dict) and "lattice" in data and "sites" in data):
        raise ValueError("not a pymatgen Structure (no 'lattice' and 'sites' keys)")
    if not data["sites"]:
        raise _NoAtomsError
    return Structure.from_dict(data)


def _read_cif(path: Path) -> Structure:
    """The first structure of a CIF, keeping partial occupancies (so they can be reported)."""
    from pymatgen.io.cif import CifParser

    parser = CifParser(path, occupancy_tolerance=1.0)
    structures = parser.parse_structures(primitive=False, on_error="raise")
    if not structures:
        raise ValueError("no structure in the file")
    return structures[0]


def _read_poscar(path: Path) -> Structure:
    from pymatgen.io.vasp import Poscar

    return Poscar.from_file(path, check_for_potcar=False).structure


def load_structure(path: str | Path) -> Structure:
    """Read an ordered crystal structure from a CIF, POSCAR/CONTCAR or pymatgen JSON file.

    The format is chosen from the file name: ``*.cif``; any name containing ``POSCAR`` or
    ``CONTCAR``, or ending in ``.vasp``; ``*.json`` (a serialised pymatgen ``Structure``, or a
    dict holding one under ``"structure"``).  Other names are tried with pymatgen's
    ``Structure.from_file``.  pymatgen's CIF warnings are silenced.

    Parameters
    ----------
    path
        The structure file.

    Returns
    -------
    Structure
        The structure, exactly as in the file (no symmetrisation or reordering).

    Raises
    ------
    UserInputError
        With a one-line message naming the file when it does not exist, cannot be parsed,
        has a partially occupied site (ionflow needs an ordered structure), contains no atoms,
        or has two atoms closer than 0.5 Å.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        what = "is a symbolic link to a missing file" if path.is_symlink() else "does not exist"
        raise UserInputError(f"structure file {path} {what}") from None
    except OSError as exc:
        what = (
            "is a symbolic link loop"
            if exc.errno == errno.ELOOP
            else f"cannot be read ({exc.strerror or type(exc).__name__})"
        )
        raise UserInputError(f"structure file {path} {what}") from None
    except ValueError:  # an embedded NUL
        raise UserInputError(f"structure file {path!r}: not a valid path") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserInputError(f"structure file {path} is not a file")
    if info.st_size > MAX_STRUCTURE_FILE_BYTES:
        raise UserInputError(
            f"structure file {path}: {info.st_size:,} bytes, more than "
            f"{MAX_STRUCTURE_FILE_BYTES:,} (MAX_STRUCTURE_FILE_BYTES)"
        )
    name = path.name.lower()
    if name.endswith(".cif"):
        reader, kind = _read_cif, "CIF"
    elif "poscar" in name or "contcar" in name or name.endswith(".vasp"):
        reader, kind = _read_poscar, "POSCAR"
    elif name.endswith(".json"):
        reader, kind = _read_json_structure, "pymatgen Structure JSON"
    else:
        reader, kind = Structure.from_file, "structure"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = reader(path)
    except _NoAtomsError:
        raise UserInputError(f"structure file {path} contains no atoms") from None
    except Exception as exc:  # pymatgen raises many types; the user needs one line
        hint = (
            ""
            if kind != "structure"
            else " (expected a CIF, POSCAR/CONTCAR/*.vasp or pymatgen Structure JSON file)"
        )
        raise UserInputError(f"cannot read {kind} file {path}: {_one_line(exc)}{hint}") from None
    if len(structure) == 0:
        raise UserInputError(f"structure file {path} contains no atoms")
    problem = lattice_problem(structure.lattice)
    if problem:
        raise UserInputError(f"structure file {path}: {problem}")
    if not np.all(np.isfinite(structure.frac_coords)):
        raise UserInputError(f"structure file {path}: atomic positions are not finite numbers")
    for index, site in enumerate(structure):
        if not site.is_ordered:
            raise UserInputError(
                f"{path} has partial occupancy on site {index} ({site.species.formula}): "
                "ionflow needs an ordered structure; order it first, e.g. with pymatgen "
                "OrderDisorderedStructureTransformation"
            )
    centres, neighbours, _, distances = structure.get_neighbor_list(MIN_INTERATOMIC_DISTANCE_A)
    if len(distances):
        k = int(np.argmin(distances))
        raise UserInputError(
            f"{path}: sites {centres[k]} ({structure[centres[k]].species_string}) and "
            f"{neighbours[k]} ({structure[neighbours[k]].species_string}) are only "
            f"{distances[k]:.2f} Å apart: overlapping atoms"
        )
    return structure


# --------------------------------------------------------------------------------------------
# supercells


def _lattice_matrix(lattice: Any) -> np.ndarray:
    """A 3×3 float array of lattice vectors (rows) from a Lattice, Structure or array."""
    if isinstance(lattice, Structure):
        lattice = lattice.lattice
    if isinstance(lattice, Lattice):
        return np.array(lattice.matrix, dtype=float)
    matrix = np.asarray(lattice, dtype=float)
    if matrix.shape != (3, 3):
        raise ValueError(f"a lattice must be a 3x3 matrix of row vectors, got shape {matrix.shape}")
    return matrix


def lattice_problem(lattice: Lattice | np.ndarray) -> str | None:
    """Why a cell cannot be simulated (non-finite vectors, zero volume, narrower than
    :data:`MIN_CELL_WIDTH_A` between opposite faces), or None."""
    matrix = _lattice_matrix(lattice)
    if not np.all(np.isfinite(matrix)):
        return "the lattice vectors are not finite numbers"
    volume = abs(float(np.linalg.det(matrix)))
    if not volume > 0:
        return "the lattice has zero volume (linearly dependent lattice vectors): a degenerate cell"
    widths = perpendicular_widths(matrix)
    if widths.min() < MIN_CELL_WIDTH_A:
        return (
            f"the cell is degenerate: {widths.min():.3g} Å between opposite faces "
            f"(volume {volume:.3g} Å³; at least {MIN_CELL_WIDTH_A} Å expected)"
        )
    return None


def min_supercell_cells(lattice: Lattice | np.ndarray, min_width_a: float) -> int:
    """A lower bound on the cells of any supercell whose widths all reach ``min_width_a``:
    ``ceil(min_width_a³ / V)`` (a cell's volume is at least the product of its widths).
    Cheap, so that the supercell's atom count can be bounded before it is searched for."""
    volume = abs(float(np.linalg.det(_lattice_matrix(lattice))))
    if not volume > 0:
        raise UserInputError("the lattice has zero volume")
    return max(1, math.ceil(min_width_a**3 / volume * (1 - 1e-9)))


def perpendicular_widths(lattice: Lattice | np.ndarray) -> np.ndarray:
    """The three distances between opposite faces of a cell, in Å.

    Width ``i`` is the cell volume divided by the area of the face spanned by the other two
    vectors, ``V / |a_j × a_k|``; equivalently ``1 / |b_i|`` for the reciprocal vectors ``b_i``
    without the 2π.  A sphere of diameter ``min(widths)`` fits in the cell, so this (not the
    vector lengths) bounds how close an atom comes to its own periodic image.

    Parameters
    ----------
    lattice
        A pymatgen ``Lattice`` (or ``Structure``) or a 3×3 array with the vectors as rows, Å.

    Returns
    -------
    numpy.ndarray
        Shape (3,), the widths perpendicular to the faces opposite vectors a, b, c, Å.
    """
    matrix = _lattice_matrix(lattice)
    volume = abs(float(np.linalg.det(matrix)))
    if volume < 1e-12:
        raise ValueError("the lattice vectors are linearly dependent (zero volume)")
    areas = np.array(
        [
            np.linalg.norm(np.cross(matrix[1], matrix[2])),
            np.linalg.norm(np.cross(matrix[2], matrix[0])),
            np.linalg.norm(np.cross(matrix[0], matrix[1])),
        ]
    )
    return volume / areas


def _diagonal_multiples(matrix: np.ndarray, min_width_a: float) -> np.ndarray:
    widths = perpendicular_widths(matrix)
    return np.maximum(1, np.ceil(min_width_a / widths * (1 - _WIDTH_RTOL))).astype(int)


def _candidate_vectors(reduced: np.ndarray, min_len: float, max_len: float) -> np.ndarray:
    """Integer coefficient vectors ``n`` (first non-zero entry positive) with
    ``min_len <= |n @ reduced| <= max_len``, sorted by length then lexicographically."""
    reciprocal = np.linalg.inv(reduced).T  # n_i = v . reciprocal_i
    bounds = np.floor(max_len * np.linalg.norm(reciprocal, axis=1) + 1e-9).astype(int)
    ranges = [np.arange(-b, b + 1) for b in bounds]
    grid = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    # canonical sign: the first non-zero coefficient is positive
    first = np.where(grid[:, 0] != 0, grid[:, 0], np.where(grid[:, 1] != 0, grid[:, 1], grid[:, 2]))
    grid = grid[first > 0]
    lengths = np.linalg.norm(grid @ reduced, axis=1)
    keep = (lengths >= min_len * (1 - _WIDTH_RTOL)) & (lengths <= max_len * (1 + _WIDTH_RTOL))
    grid, lengths = grid[keep], lengths[keep]
    order = np.lexsort((grid[:, 2], grid[:, 1], grid[:, 0], np.round(lengths, 9)))
    return grid[order]


def _search_nondiagonal(
    reduced: np.ndarray, min_width_a: float, n_lower: int, n_upper: int
) -> list[tuple[int, np.ndarray]]:
    """All bases (rows: integer coefficients in the ``reduced`` basis) with the smallest
    ``|det| <= n_upper`` whose perpendicular widths are all ``>= min_width_a``.

    Branch and bound over triples of candidate vectors sorted by length.  Every vector of such a
    basis is at least ``min_width_a`` long, and at most ``V / min_width_a**2`` (the face spanned
    by the other two has an area of at least ``|a_j| * w_k``), so the candidate set is finite;
    it shrinks each time a smaller determinant is found.
    """
    volume0 = abs(float(np.linalg.det(reduced)))
    w = min_width_a
    max_len = n_upper * volume0 / w**2
    # enumerate only a shell expected to hold ~4x the vectors kept (lattice points in a ball of
    # radius R: 4/3 pi R^3 / V0, half of them with the canonical sign)
    shell_len = (w**3 + 8 * _MAX_CANDIDATE_VECTORS * 3 * volume0 / (4 * math.pi)) ** (1 / 3)
    coeffs = _candidate_vectors(reduced, w, min(max_len, shell_len))[:_MAX_CANDIDATE_VECTORS]
    m = len(coeffs)
    if m < 3:
        return []
    vecs = coeffs @ reduced
    lengths = np.linalg.norm(vecs, axis=1)
    # |v_a x v_b| for every pair of candidates
    pair_area = np.linalg.norm(np.cross(vecs[:, None, :], vecs[None, :, :]), axis=-1)
    n_limit = n_upper
    found: list[tuple[int, np.ndarray]] = []
    tol = 1 - _WIDTH_RTOL
    for i in range(m - 2):
        m_eff = int(np.searchsorted(lengths, n_limit * volume0 / w**2 * (1 + 1e-9), side="right"))
        if i >= m_eff - 2:
            break
        js = np.arange(i + 1, m_eff - 1)
        area_ij = pair_area[i, js]
        # area = |a_i| * dist(a_j, line a_i) >= |a_j| * w (both vectors are >= w long and each
        # distance to a line bounds a width); the height over this face is >= w, V <= n_limit V0
        ok = (area_ij >= w * lengths[js] * tol) & (area_ij * w <= n_limit * volume0 * (1 + 1e-9))
        js, area_ij = js[ok], area_ij[ok]
        if len(js) == 0:
            continue
        ks = np.arange(js.min() + 1, m_eff)
        cross_ij = np.cross(coeffs[i], coeffs[js])  # integer
        dets = np.abs(cross_ij @ coeffs[ks].T)  # (|js|, |ks|) integer |det|
        valid = (ks[None, :] > js[:, None]) & (dets >= max(n_lower, 1)) & (dets <= n_limit)
        if not valid.any():
            continue
        jj, kk = np.nonzero(valid)
        det_sel = dets[jj, kk]
        vol = det_sel * volume0
        w1 = vol / pair_area[js[jj], ks[kk]]
        w2 = vol / pair_area[i, ks[kk]]
        w3 = vol / area_ij[jj]
        good = (w1 >= w * tol) & (w2 >= w * tol) & (w3 >= w * tol)
        if not good.any():
            continue
        best = int(det_sel[good].min())
        if best < n_limit:
            found = []
            n_limit = best
        for a, b in zip(
            jj[good][det_sel[good] == best], kk[good][det_sel[good] == best], strict=True
        ):
            found.append((best, np.array([coeffs[i], coeffs[js[a]], coeffs[ks[b]]])))
    return [(d, rows) for d, rows in found if d == n_limit]


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """The same supercell with rows permuted / negated to be as diagonal as possible, det > 0."""
    best_key, best = None, matrix
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            candidate = matrix[list(perm)] * np.array(signs)[:, None]
            if round(np.linalg.det(candidate)) <= 0:
                continue
            diag = np.diag(candidate)
            key = (-int(np.sum(diag)), -int(np.sum(diag > 0)), tuple(-candidate.ravel()))
            if best_key is None or key < best_key:
                best_key, best = key, candidate
    return best


def supercell_matrix(
    lattice: Lattice | np.ndarray, min_width_a: float, *, diagonal_only: bool = False
) -> np.ndarray:
    """The integer matrix of the smallest supercell whose perpendicular widths all reach a minimum.

    "Smallest" is the fewest primitive cells, i.e. the smallest ``|det|``.  The diagonal answer
    ``diag(ceil(min_width_a / width_i))`` is computed first; then non-diagonal supercells with
    fewer cells are searched for (they matter for skewed cells: for an fcc primitive cell with
    a = 4 Å and 10 Å widths the diagonal answer has 125 cells, an orthogonal 11.3 x 11.3 x 12 Å
    cell has 96).  The search runs in the LLL-reduced basis over supercell vectors between
    ``min_width_a`` and ``V_max / min_width_a**2`` long (a bound every qualifying basis obeys)
    and is exhaustive, hence provably minimal, whenever there are at most 300 such vectors;
    beyond that only the 300 shortest are tried (on fcc, bcc, hexagonal, triclinic and
    argyrodite cells up to 40 Å widths this found the same |det| as the exhaustive search).
    Typically < 0.05 s.  The result is deterministic; the diagonal answer is kept on ties,
    otherwise the candidate with the largest smallest width.

    Even an orthogonal cell can have a smaller non-diagonal answer: for a cubic 9.85 Å cell
    and 10 Å, the fcc-shaped supercell ``[[1, 0, 1], [-1, 1, 0], [0, -1, 1]]`` (2 cells,
    widths 2 x 9.85 / sqrt(3) = 11.37 Å) beats the diagonal 2 x 2 x 2 (8 cells).  Pass
    ``diagonal_only=True`` for the diagonal answer.

    Parameters
    ----------
    lattice
        A pymatgen ``Lattice`` (or ``Structure``) or a 3×3 array with the vectors as rows, Å.
    min_width_a
        The minimum perpendicular width of the supercell, Å.
    diagonal_only
        Return ``diag(ceil(min_width_a / width_i))`` without searching.

    Returns
    -------
    numpy.ndarray
        3×3 ``int`` matrix ``M`` with ``det(M) > 0``; the supercell vectors are the rows of
        ``M @ lattice_matrix`` (pymatgen's ``Structure.make_supercell`` convention).

    Raises
    ------
    UserInputError
        If ``min_width_a`` is not a positive finite number.
    """
    if not (
        isinstance(min_width_a, int | float) and math.isfinite(min_width_a) and min_width_a > 0
    ):
        raise UserInputError(
            f"the minimum supercell width must be a positive number of Å, got {min_width_a!r}"
        )
    matrix = _lattice_matrix(lattice)
    diagonal = np.diag(_diagonal_multiples(matrix, min_width_a))
    n_best = round(abs(np.linalg.det(diagonal)))
    if n_best == 1 or diagonal_only:
        return diagonal.astype(int)
    best = diagonal

    mapping = np.rint(Lattice(matrix).lll_mapping).astype(int)  # reduced = mapping @ matrix
    reduced = mapping @ matrix
    reduced_diag = np.diag(_diagonal_multiples(reduced, min_width_a))
    if round(abs(np.linalg.det(reduced_diag))) < n_best:
        best = reduced_diag @ mapping
        n_best = round(abs(np.linalg.det(best)))

    volume0 = abs(float(np.linalg.det(matrix)))
    n_lower = max(1, math.ceil(min_width_a**3 / volume0 * (1 - 1e-9)))  # V >= w1 w2 w3
    if n_lower < n_best:
        found = _search_nondiagonal(reduced, min_width_a, n_lower, n_best - 1)
        if found:
            candidates = []
            for _, rows in found:
                full = rows @ mapping
                widths = perpendicular_widths(full @ matrix)
                candidates.append(
                    (-round(float(widths.min()), 6), int(np.abs(full).max()), full.ravel().tolist())
                )
            candidates.sort()
            best = np.array(candidates[0][2]).reshape(3, 3)
    return _normalise_rows(np.asarray(best, dtype=int)).astype(int)


def make_supercell(structure: Structure, min_width_a: float) -> tuple[Structure, np.ndarray]:
    """The smallest supercell of ``structure`` whose perpendicular widths are all ``>= min_width_a``.

    Parameters
    ----------
    structure
        The (primitive or conventional) cell; not modified.
    min_width_a
        The minimum perpendicular width, Å (see :func:`supercell_matrix`).

    Returns
    -------
    tuple[Structure, numpy.ndarray]
        The supercell (a new object) and the integer matrix ``M`` used (new vectors = ``M @ old``).
    """
    matrix = supercell_matrix(structure.lattice, min_width_a)
    supercell = structure.copy()
    supercell.make_supercell(matrix)
    return supercell, matrix


# --------------------------------------------------------------------------------------------
# anion classification


class PolyanionGroup(BaseModel):
    """One polyanion group: a framework cation and the anions bonded to it."""

    centre_index: int = Field(description="Site index of the framework cation (e.g. the P of PS4).")
    centre_species: str = Field(description="Element symbol of the centre, e.g. 'P'.")
    ligand_indices: list[int] = Field(
        description="Sorted site indices of the anions bonded to the centre (each listed once)."
    )
    label: str = Field(description="Formula of the group, centre first, e.g. 'PS4' or 'PO3N'.")


class AnionClassification(BaseModel):
    """Which anions belong to polyanion groups (bonded) and which are isolated."""

    mobile_species: str = Field(description="Element symbol of the diffusing ion, e.g. 'Li'.")
    anion_species: list[str] = Field(
        description="Element symbols treated as anions (excluding the mobile species), sorted."
    )
    bonded_indices: list[int] = Field(
        description="Sorted site indices of anions bonded to at least one framework cation."
    )
    isolated_indices: list[int] = Field(
        description="Sorted site indices of anions bonded to no framework cation."
    )
    bonded_species: list[str] = Field(
        description="Anion elements with at least one bonded site, sorted."
    )
    isolated_species: list[str] = Field(
        description="Anion elements with at least one isolated site, sorted."
    )
    groups: list[PolyanionGroup] = Field(
        description="One group per framework cation with at least one bonded anion, by centre index."
    )
    method: str = Field(
        description="How anions and bonds were decided, including the distance cutoffs used."
    )
    anion_site_species: dict[int, str] = Field(
        default_factory=dict,
        description="Element symbol of every anion site (bonded and isolated), by site index.",
    )

    def summary(self) -> str:
        """One line, e.g. ``16 bonded S (4 PS4 groups); 4 isolated S, 4 isolated Cl``."""
        return _summary(self)


def _electronegativity(symbol: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = Element(symbol).X
    return float(value) if math.isfinite(value) else 0.0


def _summary_order(symbols: Sequence[str]) -> list[str]:
    """Anion symbols in the order a chemist writes them (increasing electronegativity)."""
    return sorted(symbols, key=lambda s: (_electronegativity(s), s))


def _summary(result: AnionClassification) -> str:
    if not result.bonded_indices and not result.isolated_indices:
        return "no anions"
    species_of = _species_by_index(result)
    parts = []
    if result.bonded_indices:
        counts = Counter(species_of[i] for i in result.bonded_indices)
        text = ", ".join(f"{counts[s]} bonded {s}" for s in _summary_order(list(counts)))
        labels = Counter(group.label for group in result.groups)
        noun = "group" if len(result.groups) == 1 else "groups"
        text += " (" + ", ".join(f"{labels[k]} {k}" for k in sorted(labels)) + f" {noun})"
        parts.append(text)
    else:
        parts.append("no bonded anions")
    if result.isolated_indices:
        counts = Counter(species_of[i] for i in result.isolated_indices)
        parts.append(", ".join(f"{counts[s]} isolated {s}" for s in _summary_order(list(counts))))
    else:
        parts.append("no isolated anions")
    return "; ".join(parts)


def _species_by_index(result: AnionClassification) -> dict[int, str]:
    if result.anion_site_species:
        return result.anion_site_species
    # a hand-built instance without anion_site_species: exact when one species per class
    guess: dict[int, str] = {}
    if len(result.bonded_species) == 1:
        guess.update({i: result.bonded_species[0] for i in result.bonded_indices})
    if len(result.isolated_species) == 1:
        guess.update({i: result.isolated_species[0] for i in result.isolated_indices})
    for i in [*result.bonded_indices, *result.isolated_indices]:
        guess.setdefault(i, "X")
    return guess


def _element_symbols(structure: Structure) -> list[str]:
    if not structure.is_ordered:
        raise UserInputError(
            "the structure has partially occupied sites: ionflow needs an ordered structure"
        )
    return [site.specie.symbol for site in structure]


def _oxidation_state_range(symbol: str, sign: int) -> tuple[float, float] | None:
    """(min, max) of the tabulated oxidation states of ``symbol`` with the given sign."""
    element = Element(symbol)
    for states in (element.common_oxidation_states, element.oxidation_states):
        chosen = [s for s in states if s * sign > 0]
        if chosen:
            return float(min(chosen)), float(max(chosen))
    return None


def _decide_anions(structure: Structure, symbols: list[str]) -> tuple[set[str], str]:
    """The anion elements and a sentence saying how they were found."""
    counts = Counter(symbols)
    oxi = [getattr(site.specie, "oxi_state", None) for site in structure]
    if all(o is not None for o in oxi) and any(o != 0 for o in oxi):
        anions = {s for s, o in zip(symbols, oxi, strict=True) if o < 0}
        return anions, "anions from the structure's oxidation states"
    elements = sorted(counts, key=lambda s: (-_electronegativity(s), s))
    if len(elements) < 2:
        return set(), "a single element: no anions"
    best_k, best_gap = 1, math.inf
    for k in range(1, len(elements)):
        low = high = 0.0
        feasible = True
        for position, symbol in enumerate(elements):
            bounds = _oxidation_state_range(symbol, -1 if position < k else 1)
            if bounds is None:
                feasible = False
                break
            low += bounds[0] * counts[symbol]
            high += bounds[1] * counts[symbol]
        if not feasible:
            continue
        gap = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
        if gap < best_gap - 1e-9:
            best_k, best_gap = k, gap
        if gap == 0:
            break
    anions = set(elements[:best_k])
    return anions, (
        "anions = the fewest most-electronegative elements whose negative oxidation states "
        "balance the others' positive ones"
    )


def classify_anions(
    structure: Structure, mobile_species: str = "Li", *, bond_tolerance: float = 1.2
) -> AnionClassification:
    """Split the anions of ``structure`` into bonded (polyanion ligands) and isolated ones.

    An anion is *bonded* when it lies within ``(r_cov(cation) + r_cov(anion)) * bond_tolerance``
    of a framework cation — any cation except the mobile species and s-block metals — and
    *isolated* otherwise (its only neighbours are mobile ions or s-block counter-ions).  Each
    framework cation with bonded anions forms a :class:`PolyanionGroup`; an anion shared by two
    centres (corner-sharing frameworks) is a ligand of both.  See the module docstring for how
    anions are found and why covalent radii rather than CrystalNN.

    Parameters
    ----------
    structure
        An ordered structure, any size (one periodic neighbour search, well under a second for
        thousands of atoms).
    mobile_species
        Element symbol of the diffusing ion (Li, Na, K, Mg, Ag, Cu, ...).
    bond_tolerance
        Multiplier on the sum of covalent radii defining a bond (default 1.2).

    Returns
    -------
    AnionClassification

    Raises
    ------
    UserInputError
        If the mobile species is not an element of the structure or the structure is disordered.
    """
    symbols = _element_symbols(structure)
    present = sorted(set(symbols))
    if mobile_species not in present:
        raise UserInputError(
            f"mobile species {mobile_species!r} is not in the structure "
            f"({structure.composition.formula}; elements: {', '.join(present)})"
        )
    if not (math.isfinite(bond_tolerance) and bond_tolerance > 0):
        raise ValueError(f"bond_tolerance must be positive, got {bond_tolerance}")
    anion_set, anion_rule = _decide_anions(structure, symbols)
    anion_set.discard(mobile_species)
    cations = [s for s in present if s not in anion_set and s != mobile_species]
    centres = sorted(s for s in cations if not (Element(s).is_alkali or Element(s).is_alkaline))
    spectators = sorted(set(cations) - set(centres))
    anion_species = sorted(anion_set)

    def radius(symbol: str) -> float:
        return float(covalent_radii[Element(symbol).Z])

    cutoffs = {
        (c, a): (radius(c) + radius(a)) * bond_tolerance for c in centres for a in anion_species
    }
    symbol_array = np.array(symbols)
    anion_indices = [i for i, s in enumerate(symbols) if s in anion_set]
    ligands: dict[int, set[int]] = {}
    if cutoffs and anion_indices:
        r_max = max(cutoffs.values())
        centre_sites = [i for i, s in enumerate(symbols) if s in centres]
        if centre_sites:
            sites = [structure[i] for i in centre_sites]
            ci, ni, _, dist = structure.get_neighbor_list(r_max, sites=sites)
            ci = np.asarray(centre_sites)[ci.astype(int)]
            ni = ni.astype(int)
            cut = np.array(
                [
                    cutoffs.get((symbol_array[c], symbol_array[n]), -1.0)
                    for c, n in zip(ci, ni, strict=True)
                ]
            )
            bonded_mask = dist <= cut
            for c, n in zip(ci[bonded_mask], ni[bonded_mask], strict=True):
                ligands.setdefault(int(c), set()).add(int(n))
    bonded = sorted({n for group in ligands.values() for n in group})
    bonded_set = set(bonded)
    isolated = [i for i in anion_indices if i not in bonded_set]
    groups = []
    for centre in sorted(ligands):
        members = sorted(ligands[centre])
        formula = Counter(symbols[i] for i in members)
        label = symbols[centre] + "".join(
            f"{s}{formula[s] if formula[s] > 1 else ''}" for s in sorted(formula)
        )
        groups.append(
            PolyanionGroup(
                centre_index=centre,
                centre_species=symbols[centre],
                ligand_indices=members,
                label=label,
            )
        )
    if cutoffs:
        cutoff_text = ", ".join(f"{c}-{a} <= {d:.2f} Å" for (c, a), d in sorted(cutoffs.items()))
    else:
        cutoff_text = "none: no framework cation"
    method = (
        f"{anion_rule} ({', '.join(anion_species) or 'none'}); an anion is bonded when within "
        f"(sum of Cordero covalent radii) x {bond_tolerance:g} of a framework cation "
        f"(any cation except the mobile {mobile_species} and s-block metals"
        + (f" {', '.join(spectators)}" if spectators else "")
        + f"): {cutoff_text}"
    )
    result = AnionClassification(
        mobile_species=mobile_species,
        anion_species=anion_species,
        bonded_indices=bonded,
        isolated_indices=isolated,
        bonded_species=sorted({symbols[i] for i in bonded}),
        isolated_species=sorted({symbols[i] for i in isolated}),
        groups=groups,
        method=method,
        anion_site_species={i: symbols[i] for i in anion_indices},
    )
    return result


def pinned_indices(
    structure: Structure, mobile_species: str, pinned_control: str | Sequence[str] | bool
) -> tuple[list[int], str]:
    """The site indices frozen in the pinned-anion control MD, and a sentence saying why.

    Parameters
    ----------
    structure
        The structure the control MD runs on (usually the supercell).
    mobile_species
        Element symbol of the diffusing ion.
    pinned_control
        ``"auto"``: every bonded anion of :func:`classify_anions` (no pinning, with the reason,
        when every anion is isolated); ``"off"`` (or ``False``, which is how YAML reads a bare
        ``off``): nothing; a list of element symbols: every site of those elements.

    Returns
    -------
    tuple[list[int], str]
        Sorted site indices to fix, and a one-line reason for the log / report.

    Raises
    ------
    UserInputError
        For an unknown setting, a listed symbol that is not an element, is absent from the
        structure, or is the mobile species.
    """
    if pinned_control is False:
        pinned_control = "off"
    if isinstance(pinned_control, str):
        setting = pinned_control.strip().lower()
        if setting == "off":
            return [], "pinned-anion control switched off (pinned_control: off)"
        if setting != "auto":
            raise UserInputError(
                "pinned_control must be 'auto', 'off' or a list of element symbols "
                f"(e.g. [S]); got {pinned_control!r}"
            )
        result = classify_anions(structure, mobile_species)
        if not result.anion_species:
            return [], "no polyanion groups: no anions found"
        if not result.bonded_indices:
            spectator_text = ""
            framework = [
                s
                for s in sorted({site.specie.symbol for site in structure})
                if s != mobile_species and s not in result.anion_species
            ]
            if framework:
                spectator_text = f" and {', '.join(framework)}"
            return [], (
                "no polyanion groups: every anion is isolated "
                f"(bonded only to {mobile_species}{spectator_text})"
            )
        return list(result.bonded_indices), (
            f"auto: pinned the {len(result.bonded_indices)} bonded anions of polyanion groups: "
            f"{result.summary()}"
        )
    if isinstance(pinned_control, bool) or not isinstance(pinned_control, Sequence):
        raise UserInputError(
            "pinned_control must be 'auto', 'off' or a list of element symbols; "
            f"got {pinned_control!r}"
        )
    symbols = _element_symbols(structure)
    present = sorted(set(symbols))
    requested: list[str] = []
    for item in pinned_control:
        if not isinstance(item, str) or not Element.is_valid_symbol(item.strip()):
            raise UserInputError(f"pinned_control lists {item!r}, which is not an element symbol")
        symbol = item.strip()
        if symbol == mobile_species:
            raise UserInputError(
                f"pinned_control lists {symbol}, the mobile species: pinning it would freeze "
                "the diffusion being measured"
            )
        if symbol not in present:
            raise UserInputError(
                f"pinned_control lists {symbol}, which is not in the structure "
                f"({structure.composition.formula}; elements: {', '.join(present)})"
            )
        if symbol not in requested:
            requested.append(symbol)
    if not requested:
        return [], "pinned_control is an empty list: nothing pinned"
    indices = [i for i, s in enumerate(symbols) if s in requested]
    return indices, (
        f"pinning every {', '.join(requested)} site ({len(indices)} atoms) as listed in "
        "pinned_control"
    )


def with_selective_dynamics(structure: Structure, fixed_indices: Sequence[int]) -> Structure:
    """A copy of ``structure`` with a ``selective_dynamics`` site property.

    Fixed sites get ``[False, False, False]`` (VASP's "do not move"), all others
    ``[True, True, True]``.  pymatgen's ``AseAtomsAdaptor.get_atoms`` turns this into one ASE
    ``FixAtoms`` constraint on the fixed indices; ``Poscar`` writes it as Selective dynamics.

    Parameters
    ----------
    structure
        The structure; not modified.
    fixed_indices
        Site indices to fix (duplicates are ignored).

    Returns
    -------
    Structure

    Raises
    ------
    ValueError
        If an index is out of range.
    """
    n_sites = len(structure)
    fixed = set()
    for index in fixed_indices:
        i = int(index)
        if not 0 <= i < n_sites:
            raise ValueError(f"fixed index {index} is out of range for {n_sites} sites")
        fixed.add(i)
    flags = [[False] * 3 if i in fixed else [True] * 3 for i in range(n_sites)]
    copy = structure.copy()
    copy.add_site_property("selective_dynamics", flags)
    return copy


def free_degrees_of_freedom(n_atoms: int, n_fixed: int) -> int:
    """Kinetic degrees of freedom of an MD run, for the temperature ``T = 2 E_kin / (N_f k_B)``.

    Without fixed atoms a thermostat/integrator conserves the total momentum, so the three
    centre-of-mass degrees of freedom carry no thermal energy: ``3 * n_atoms - 3``.  With fixed
    atoms the momentum of the moving atoms is not conserved (the fixed atoms exert forces and
    absorb momentum), so every Cartesian coordinate of a free atom is a degree of freedom:
    ``3 * (n_atoms - n_fixed)``.

    Parameters
    ----------
    n_atoms
        Total number of atoms (>= 1).
    n_fixed
        Number of fixed atoms (0 <= n_fixed <= n_atoms).

    Returns
    -------
    int
    """
    if n_atoms < 1 or not 0 <= n_fixed <= n_atoms:
        raise ValueError(
            f"need n_atoms >= 1 and 0 <= n_fixed <= n_atoms, got {n_atoms} and {n_fixed}"
        )
    if n_fixed == 0:
        return max(3 * n_atoms - 3, 0)
    return 3 * (n_atoms - n_fixed)
