"""Build the example structures from published crystallography (and optionally relax them).

    .venv/bin/python examples/build_examples.py            # writes Li6PS5Cl.cif, Li3N.cif
    .venv/bin/python examples/build_examples.py --relax    # also *_relaxed.cif (CHGNet, ~1 min)

Li6PS5Cl — argyrodite, Deiseroth et al., Angew. Chem. Int. Ed. 47, 755 (2008):
F-43m (No. 216), a = 9.85 Å; P 4b (1/2, 1/2, 1/2); S 16e (x, x, x) with x = 0.619 (the PS4
tetrahedra); the isolated S 4c (1/4, 1/4, 1/4); Cl 4a (0, 0, 0); Li 48h (x, x, z) with
x = 0.311, z = 0.022 at half occupancy.  The 48 Li sites form 24 pairs 1.7 Å apart, so
exactly one site of each pair is taken, such that every Li-Li distance is at least 2.3 Å: a
2-SAT problem (one boolean per pair, one clause "not both" per too-close pair of sites),
solved exactly with the strongly-connected-components algorithm.  With these coordinates the
next Li-Li distance after 1.70 Å is 2.33 Å, so every choice passes and the 2-SAT has no
clauses; the choice is then improved by single-pair flips lowering sum(1/r) over Li-Li pairs,
which leaves 8 Li-Li contacts at 2.33 Å (the minimum, 2 per Li cage around each isolated S)
instead of 15.  Result: the ordered 52-atom cell Li24 P4 S20 Cl4 (space group P1).

Li3N — Rabenau & Schulz, J. Less-Common Met. 50, 155 (1976): P6/mmm (No. 191),
a = 3.648 Å, c = 3.875 Å; N 1a (0, 0, 0); Li 1b (0, 0, 1/2); Li 2c (1/3, 2/3, 0).  4 atoms.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

HERE = Path(__file__).resolve().parent

#: Shortest Li-Li distance allowed when ordering the half-occupied 48h sites, Å.
LI_LI_MIN_A = 2.3
#: Shortest interatomic distance accepted in a built structure, Å.
MIN_DISTANCE_A = 1.9


def _two_sat(n_vars: int, clauses: list[tuple[int, bool, int, bool]]) -> list[bool] | None:
    """Solve 2-SAT: each clause ``(a, va, b, vb)`` means ``x_a == va or x_b == vb``.

    Literals are nodes ``2 * var + (0 if True else 1)``; a clause (p or q) adds the
    implications not-p -> q and not-q -> p.  Satisfiable iff no variable shares a strongly
    connected component with its negation; then x is True when the component of "x" comes
    after that of "not x" in topological order (Tarjan numbers components in reverse
    topological order, so: comp[x] < comp[not x]).
    """
    n_nodes = 2 * n_vars

    def node(var: int, value: bool) -> int:
        return 2 * var + (0 if value else 1)

    graph: list[list[int]] = [[] for _ in range(n_nodes)]
    for a, va, b, vb in clauses:
        graph[node(a, not va)].append(node(b, vb))
        graph[node(b, not vb)].append(node(a, va))

    # iterative Tarjan
    index = [-1] * n_nodes
    low = [0] * n_nodes
    on_stack = [False] * n_nodes
    comp = [-1] * n_nodes
    stack: list[int] = []
    counter = 0
    n_comp = 0
    for root in range(n_nodes):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            v, child = work.pop()
            if child == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            recursed = False
            for position in range(child, len(graph[v])):
                w = graph[v][position]
                if index[w] == -1:
                    work.append((v, position + 1))
                    work.append((w, 0))
                    recursed = True
                    break
                if on_stack[w]:
                    low[v] = min(low[v], index[w])
            if recursed:
                continue
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = n_comp
                    if w == v:
                        break
                n_comp += 1
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    assignment = []
    for var in range(n_vars):
        true_node, false_node = node(var, True), node(var, False)
        if comp[true_node] == comp[false_node]:
            return None
        assignment.append(comp[true_node] < comp[false_node])
    return assignment


def _order_half_occupied(
    framework: Structure, lattice: Lattice, species: str, sites_frac: np.ndarray, min_a: float
) -> Structure:
    """Add one site of each close pair of ``sites_frac`` so that all kept sites are >= min_a apart."""
    dist = lattice.get_all_distances(sites_frac, sites_frac)
    n = len(sites_frac)
    np.fill_diagonal(dist, np.inf)
    partner = np.argmin(dist, axis=1)
    pair_distance = dist[np.arange(n), partner]
    if not np.all(partner[partner] == np.arange(n)):
        raise RuntimeError("the half-occupied sites do not form mutual nearest-neighbour pairs")
    pairs = sorted({(min(i, int(j)), max(i, int(j))) for i, j in enumerate(partner)})
    print(
        f"  {n} half-occupied {species} sites form {len(pairs)} pairs "
        f"{pair_distance.min():.2f}-{pair_distance.max():.2f} Å apart"
    )
    var_of = {}
    for k, (i, j) in enumerate(pairs):
        var_of[i] = (k, True)  # x_k True: keep the first site of pair k
        var_of[j] = (k, False)
    clauses = []
    for i in range(n):
        for j in range(i + 1, n):
            if j == partner[i] or dist[i, j] >= min_a:
                continue
            (a, va), (b, vb) = var_of[i], var_of[j]
            clauses.append((a, not va, b, not vb))  # not (site i kept and site j kept)
    assignment = _two_sat(len(pairs), clauses)
    if assignment is None:
        raise RuntimeError(f"no choice of one {species} per pair keeps all {species} >= {min_a} Å")
    choice = np.array(assignment)
    print(f"  2-SAT: {len(clauses)} 'not both' clauses (pairs of sites < {min_a} Å), satisfiable")
    choice = _relax_choice(choice, np.array(pairs), dist, min_a)
    keep = [i if choice[k] else j for k, (i, j) in enumerate(pairs)]
    kept = dist[np.ix_(keep, keep)]
    upper = kept[np.triu_indices(len(keep), 1)]
    print(
        f"  kept {len(keep)} {species}: shortest {species}-{species} {upper.min():.2f} Å, "
        f"{int((upper < 2.5).sum())} contacts < 2.5 Å"
    )
    ordered = framework.copy()
    for i in sorted(keep):
        ordered.append(species, sites_frac[i])
    return ordered


def _relax_choice(
    choice: np.ndarray, pairs: np.ndarray, dist: np.ndarray, min_a: float
) -> np.ndarray:
    """Improve a valid choice by single-pair flips that lower sum(1/r) over the kept sites.

    Any 2-SAT solution satisfies the hard constraint; among them, a Coulomb-like repulsion
    spreads the ions out (for Li6PS5Cl: 15 -> 8 Li-Li contacts at 2.33 Å, i.e. the minimum of
    2 in each of the four Li cages, checked by enumerating each cage's 2^6 choices).  Flips
    are tried in a fixed order, so the result is deterministic.
    """

    def sites(x: np.ndarray) -> np.ndarray:
        return np.where(x, pairs[:, 0], pairs[:, 1])

    def energy(x: np.ndarray) -> float:
        kept = dist[np.ix_(sites(x), sites(x))]
        upper = kept[np.triu_indices(len(x), 1)]
        if upper.min() < min_a:
            return np.inf
        return float(np.sum(1.0 / upper))

    current = energy(choice)
    improved = True
    while improved:
        improved = False
        for k in range(len(choice)):
            trial = choice.copy()
            trial[k] = not trial[k]
            value = energy(trial)
            if value < current - 1e-12:
                choice, current, improved = trial, value, True
    return choice


def _check_distances(structure: Structure, name: str) -> float:
    dist = structure.distance_matrix + np.eye(len(structure)) * 1e9
    shortest = float(dist.min())
    if shortest < MIN_DISTANCE_A:
        raise RuntimeError(f"{name}: two atoms only {shortest:.2f} Å apart")
    return shortest


def build_li6ps5cl() -> Structure:
    """The ordered 52-atom Li6PS5Cl cell (Li24 P4 S20 Cl4), see the module docstring."""
    a = 9.85
    lattice = Lattice.cubic(a)
    # F-43m in pymatgen's (ITA standard) setting: 4a (0,0,0), 4b (1/2,1/2,1/2),
    # 4c (1/4,1/4,1/4), 4d (3/4,3/4,3/4).  The isolated S sits at 4c: the 16e S of the PS4
    # around 4b at x = 0.619 point towards (3/4,3/4,3/4) and would be 2.2 Å from an S at 4d.
    framework = Structure.from_spacegroup(
        216,
        lattice,
        ["P", "S", "S", "Cl"],
        [[0.5, 0.5, 0.5], [0.619, 0.619, 0.619], [0.25, 0.25, 0.25], [0.0, 0.0, 0.0]],
    )
    li_48h = Structure.from_spacegroup(216, lattice, ["Li"], [[0.311, 0.311, 0.022]])
    assert len(li_48h) == 48, len(li_48h)
    ordered = _order_half_occupied(framework, lattice, "Li", li_48h.frac_coords, LI_LI_MIN_A)
    ordered = ordered.get_sorted_structure(
        key=lambda site: ["Li", "P", "S", "Cl"].index(site.specie.symbol)
    )
    assert ordered.composition.reduced_formula == "Li6PS5Cl" and len(ordered) == 52
    return ordered


def build_li3n() -> Structure:
    """The 4-atom Li3N cell, see the module docstring."""
    lattice = Lattice.hexagonal(3.648, 3.875)
    structure = Structure.from_spacegroup(
        191, lattice, ["Li", "Li", "N"], [[0, 0, 0.5], [1 / 3, 2 / 3, 0], [0, 0, 0]]
    )
    assert structure.composition.reduced_formula == "Li3N" and len(structure) == 4
    return structure


def relax(structure: Structure, name: str) -> Structure:
    """Relax positions and cell with CHGNet (FIRE + FrechetCellFilter, fmax 0.05 eV/Å)."""
    from chgnet.model import StructOptimizer

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch / scipy logm chatter, one line per step
        optimizer = StructOptimizer()
        result = optimizer.relax(
            structure,
            fmax=0.05,
            steps=500,
            relax_cell=True,
            ase_filter="FrechetCellFilter",
            verbose=False,
        )
    relaxed: Structure = result["final_structure"]
    old, new = structure.lattice, relaxed.lattice
    print(
        f"  {name}: relaxed in {time.perf_counter() - start:.0f} s, "
        f"{len(result['trajectory'].energies)} steps; a, b, c "
        f"{old.a:.3f}, {old.b:.3f}, {old.c:.3f} -> {new.a:.3f}, {new.b:.3f}, {new.c:.3f} Å; "
        f"volume {old.volume:.1f} -> {new.volume:.1f} Å^3 "
        f"({100 * (new.volume / old.volume - 1):+.1f} %)"
    )
    return relaxed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relax", action="store_true", help="also write *_relaxed.cif (CHGNet)")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, builder in (("Li6PS5Cl", build_li6ps5cl), ("Li3N", build_li3n)):
        print(f"{name}:")
        structure = builder()
        shortest = _check_distances(structure, name)
        path = args.out / f"{name}.cif"
        CifWriter(structure).write_file(path)
        print(
            f"  wrote {path.name}: {structure.composition.formula}, {len(structure)} atoms, "
            f"shortest distance {shortest:.2f} Å"
        )
        if args.relax:
            relaxed = relax(structure, name)
            _check_distances(relaxed, f"{name} (relaxed)")
            relaxed_path = args.out / f"{name}_relaxed.cif"
            CifWriter(relaxed).write_file(relaxed_path)
            print(f"  wrote {relaxed_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
