"""A VASP stand-in: runs the ionic loop of a VASP calculation with a cheap potential.

There is no VASP (and no POTCAR) on development machines and CI. This module reads a VASP
input directory and writes the output files that pymatgen, custodian, emmet and atomate2
parse, so that the *real* ionflow → atomate2 → custodian path runs end to end::

    python -m ionflow.vasp_standin            # in a directory with INCAR, POSCAR, ...
    IONFLOW_VASP_CMD="python -m ionflow.vasp_standin"   # how ionflow's makers call it

What it does
------------
* Reads ``INCAR``, ``POSCAR`` (selective dynamics, velocities), ``KPOINTS`` (optional; Γ
  if absent) and the POTCAR symbols from ``POTCAR.spec`` or ``POTCAR`` (optional).
* ``IBRION = 0``: NSW steps of MD with the time step ``POTIM`` (fs) at ``TEBEG`` (K).
  Velocities come from the POSCAR when it has any, else Maxwell–Boltzmann at ``TEBEG``
  (seeded by ``RANDOM_SEED``, default 0; centre-of-mass motion removed when nothing is
  fixed; rescaled to ``TEBEG`` exactly). ``SMASS ≥ 0`` (or ``MDALGO = 2``) → velocity
  Verlet with a Nosé–Hoover chain whose period is 40 steps (VASP's ``SMASS = 0``);
  ``SMASS = -3`` or ``MDALGO = 1`` with ``ANDERSEN_PROB = 0`` → NVE; ``MDALGO = 3`` →
  Langevin (mean ``LANGEVIN_GAMMA``, ps⁻¹).
* ``IBRION = 1, 2, 3``: a BFGS relaxation (cell too when ``ISIF ≥ 3``) for at most NSW
  steps, converged when the largest force is below ``|EDIFFG|`` (``EDIFFG < 0``) or the
  energy change below ``EDIFFG``.  ``NSW = 0`` / ``IBRION = -1``: a single point.
* Selective dynamics: atoms flagged ``F F F`` never move (zero force, zero velocity);
  the temperature is ``2 E_kin / (n_dof k_B)`` over the free degrees of freedom
  (:func:`ionflow.structure.free_degrees_of_freedom`: ``3 N_free`` when atoms are fixed,
  ``3 N − 3`` otherwise), which is also what the thermostat targets.
* ``STOPCAR`` with ``LSTOP = .TRUE.`` (or ``LABORT``) — what custodian's walltime handler
  writes — is read after every ionic step: the run stops there and writes complete output
  files, as VASP does.

Output files
------------
``vasprun.xml`` (streamed: one ``<calculation>`` per ionic step whose ``<structure>`` is the
configuration whose forces were computed — step 0 is the POSCAR —; ``<parameters>`` with
ISPIN, NBANDS, NELECT, MAGMOM...; fake eigenvalues and DOS of a 2 eV-gap insulator in the
last step, which chained runs and pymatgen's ``from_prev`` logic read), ``OUTCAR`` (with the
``NBANDS=``, ``IBRION =``, ``ISPIN =`` lines, ``LOOP+`` timings for custodian's walltime
handler, run statistics), ``OSZICAR``, ``CONTCAR`` (the configuration *after* the last
step, with velocities for MD, so the next segment continues without a gap or a duplicated
frame), ``XDATCAR`` (every ``NBLOCK``-th ionic step, the same configurations as the
vasprun) and VASP-like lines on stdout.  Energies are the toy potential's plus a constant
−5 eV per atom (so that handlers looking for positive energies stay quiet); they are **not**
DFT energies.

Environment
-----------
``IONFLOW_STANDIN_POTENTIAL``
    ionflow potential name (default ``toy``; see :func:`ionflow.potentials.get_calculator`).
``IONFLOW_STANDIN_STEP_DELAY_S``
    Sleep this long per ionic step (seconds; default 0) — lets tests exercise walltime
    handlers on a run that is not over before they look.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = ["StandinResult", "main", "run"]

#: Energy offset per atom added to the toy potential's energy, eV.
ENERGY_OFFSET_EV_PER_ATOM = -5.0
#: Period of the Nosé thermostat in MD steps (VASP's default for SMASS = 0).
NOSE_PERIOD_STEPS = 40
#: Fake band gap of the stand-in's "insulator", eV.
FAKE_GAP_EV = 2.0

_EV_A3_TO_KBAR = 1602.1766208  # 1 eV/Å^3 in kbar
_OSZICAR_HEADER = (
    "       N       E                     dE             d eps       ncg     rms          rms(c)\n"
)

# Valence electrons of common PBE PAW POTCARs (only used to fake NELECT/NBANDS).
_ZVAL = {
    "H": 1, "Li_sv": 3, "Li": 1, "Na_pv": 7, "Na": 1, "K_sv": 9, "Mg": 2, "Mg_pv": 8,
    "Ca_sv": 10, "B": 3, "Al": 3, "Ga_d": 13, "C": 4, "Si": 4, "Ge_d": 14, "Sn_d": 14,
    "N": 5, "P": 5, "As": 5, "Sb": 5, "O": 6, "S": 6, "Se": 6, "Te": 6, "F": 7, "Cl": 7,
    "Br": 7, "I": 7, "Ti_sv": 12, "V_sv": 13, "Cr_pv": 12, "Mn_pv": 13, "Fe": 8, "Co": 9,
    "Ni": 10, "Cu": 11, "Zn": 12, "Zr_sv": 12, "Nb_sv": 13, "Mo_sv": 14, "Y_sv": 11,
    "La": 11, "In_d": 13,
}  # fmt: skip


@dataclass
class StandinResult:
    """What a stand-in run did."""

    mode: str
    n_ionic_steps: int
    stopped_by_stopcar: bool
    converged: bool
    files: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------- inputs


@dataclass
class _Cell:
    """A periodic cell: lattice vectors as rows (Å) and fractional coordinates."""

    lattice: np.ndarray
    frac: np.ndarray

    @property
    def cart(self) -> np.ndarray:
        return self.frac @ self.lattice

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def reciprocal(self) -> np.ndarray:
        """Reciprocal lattice without the 2π factor (VASP's ``rec_basis``)."""
        return np.linalg.inv(self.lattice).T


@dataclass
class _Inputs:
    incar: dict[str, Any]
    cell: _Cell
    velocities_a_fs: np.ndarray | None
    selective: np.ndarray  # (n, 3) bool, True = may move
    kpoints: tuple[str, list[int]]  # ("Gamma" | "Monkhorst-Pack", divisions)
    potcar_symbols: list[str]
    species: list[str]  # per atom
    types: list[tuple[str, int]]  # (element, count) in POSCAR order
    comment: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        return self.incar.get(key, default)

    @property
    def formula(self) -> str:
        counts: dict[str, int] = {}
        for sym, n in self.types:
            counts[sym] = counts.get(sym, 0) + n
        return "".join(f"{sym}{n}" for sym, n in counts.items())


# Small parsers for the files pymatgen writes (importing pymatgen.io.vasp costs seconds,
# which every VASP job of a test campaign would pay).

_BOOL = {".TRUE.": True, ".FALSE.": False, "T": True, "F": False, "TRUE": True, "FALSE": False}
_INT = re.compile(r"^[+-]?\d+$")


def _number(token: str) -> float | int:
    if _INT.match(token):
        return int(token)
    return float(token.replace("D", "E").replace("d", "e"))


def _incar_value(key: str, text: str) -> Any:
    tokens = text.split()
    if not tokens:
        return ""
    if len(tokens) == 1 and key not in ("MAGMOM", "LANGEVIN_GAMMA", "RANDOM_SEED"):
        token = tokens[0]
        if token.upper() in _BOOL:
            return _BOOL[token.upper()]
        try:
            return _number(token)
        except ValueError:
            return token
    values: list[Any] = []
    try:
        for token in tokens:
            if "*" in token:
                count, value = token.split("*", 1)
                values.extend([_number(value)] * int(count))
            else:
                values.append(_number(token))
    except ValueError:
        return text.strip()
    return values


def _parse_incar(text: str) -> dict[str, Any]:
    incar: dict[str, Any] = {}
    for raw in text.splitlines():
        line = re.split(r"[#!]", raw, maxsplit=1)[0]
        for statement in line.split(";"):
            if "=" not in statement:
                continue
            key, value = statement.split("=", 1)
            key = key.strip().upper()
            if key:
                incar[key] = _incar_value(key, value)
    return incar


def _parse_poscar(text: str, potcar_symbols: list[str]) -> tuple:
    """(cell, species, types, selective flags, velocities Å/fs or None, comment)."""
    lines = text.splitlines()
    comment = lines[0].strip()
    scale = [float(x) for x in lines[1].split()[:3]]
    lattice = np.array([[float(x) for x in lines[i].split()[:3]] for i in (2, 3, 4)])
    words = lines[5].split()
    i = 6
    if all(w[0].isalpha() for w in words):
        symbols = [w.split("/")[0].split("_")[0] for w in words]
        counts = [int(x) for x in lines[6].split()]
        i = 7
    else:  # VASP 4 POSCAR: element names from the POTCAR symbols, else the comment
        counts = [int(x) for x in words]
        names = potcar_symbols or comment.split()
        symbols = [n.split("_")[0] for n in names[: len(counts)]]
    if len(scale) == 3:
        lattice = lattice * np.asarray(scale)[:, None]
    elif scale[0] < 0:
        lattice = lattice * (-scale[0] / abs(np.linalg.det(lattice))) ** (1.0 / 3.0)
    else:
        lattice = lattice * scale[0]
    selective_mode = lines[i].strip()[:1] in ("s", "S")
    if selective_mode:
        i += 1
    cartesian = lines[i].strip()[:1] in ("c", "C", "k", "K")
    i += 1
    n = sum(counts)
    coords = np.empty((n, 3))
    selective = np.ones((n, 3), bool)
    for k in range(n):
        parts = lines[i + k].split()
        coords[k] = [float(x) for x in parts[:3]]
        if selective_mode:
            selective[k] = [p.upper().startswith("T") for p in parts[3:6]]
    i += n
    if cartesian:
        factor = scale[0] if len(scale) == 1 and scale[0] > 0 else 1.0
        coords = (coords * factor) @ np.linalg.inv(lattice)
    velocities = None
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and lines[i].strip()[:1].isalpha():
        direct = lines[i].strip()[:1] in ("d", "D")
        i += 1
    else:
        direct = False
    if i + n <= len(lines):
        try:
            vel = np.array([[float(x) for x in lines[i + k].split()[:3]] for k in range(n)])
            velocities = vel @ lattice if direct else vel
        except (ValueError, IndexError):
            velocities = None
    species = [sym for sym, c in zip(symbols, counts, strict=True) for _ in range(c)]
    types = list(zip(symbols, counts, strict=True))
    return _Cell(lattice, coords), species, types, selective, velocities, comment


def _parse_kpoints(text: str) -> tuple[str, list[int]]:
    lines = text.splitlines()
    style = lines[2].strip()[:1].lower() if len(lines) > 2 else "g"
    divisions = [1, 1, 1]
    if len(lines) > 3:
        try:
            values = [int(round(float(x))) for x in lines[3].split()[:3]]
            if len(values) == 3:
                divisions = values
        except ValueError:
            pass
    return ("Monkhorst-Pack" if style == "m" else "Gamma"), divisions


def _read_potcar_symbols(directory: Path, n_types: int) -> list[str]:
    spec = directory / "POTCAR.spec"
    if spec.exists():
        symbols = [s.strip() for s in spec.read_text().split() if s.strip()]
        if symbols:
            return symbols
    potcar = directory / "POTCAR"
    if potcar.exists():
        out = []
        for line in potcar.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("PAW"):
                out.append(parts[1])
        # each POTCAR block has its title twice (first line and TITEL); keep one per type
        dedup = out[::2] if len(out) == 2 * n_types else out
        if dedup:
            return dedup
    return []


def _read_inputs(directory: Path) -> _Inputs:
    incar = _parse_incar((directory / "INCAR").read_text())
    potcars = _read_potcar_symbols(directory, 0)
    cell, species, types, selective, velocities, comment = _parse_poscar(
        (directory / "POSCAR").read_text(), potcars
    )
    if velocities is not None and not np.any(velocities):
        velocities = None
    kp_path = directory / "KPOINTS"
    kpoints = _parse_kpoints(kp_path.read_text()) if kp_path.exists() else ("Gamma", [1, 1, 1])
    if len(potcars) != len(types):
        potcars = [sym for sym, _ in types]
    return _Inputs(incar, cell, velocities, selective, kpoints, potcars, species, types, comment)


def _stop_requested(directory: Path) -> bool:
    path = directory / "STOPCAR"
    if not path.exists():
        return False
    with contextlib.suppress(OSError):
        text = path.read_text().upper().replace(" ", "")
        return "LSTOP=.TRUE." in text or "LABORT=.TRUE." in text or "LSTOP=T" in text
    return False


# ------------------------------------------------------------------------ writers


def _f(x: float, width: int = 16, prec: int = 8) -> str:
    return f"{x:{width}.{prec}f}"


def _v_line(values: Sequence[float], prec: int = 8) -> str:
    return "".join(f" {x:{prec + 8}.{prec}f}" for x in values)


def _xml_i(name: str, value: Any, indent: str = "  ") -> str:
    if isinstance(value, bool):
        return f'{indent}<i type="logical" name="{name}"> {"T" if value else "F"}  </i>\n'
    if isinstance(value, int | np.integer):
        return f'{indent}<i type="int" name="{name}">{int(value):8d}</i>\n'
    if isinstance(value, float | np.floating):
        return f'{indent}<i name="{name}">{float(value):16.8f}</i>\n'
    return f'{indent}<i type="string" name="{name}">{value}</i>\n'


def _xml_v(name: str, values: Sequence[Any], indent: str = "  ") -> str:
    if values and isinstance(values[0], bool):
        text = " ".join("T" if v else "F" for v in values)
        return f'{indent}<v type="logical" name="{name}"> {text} </v>\n'
    if values and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        text = " ".join(f"{int(v):8d}" for v in values)
        return f'{indent}<v type="int" name="{name}">{text} </v>\n'
    text = " ".join(f"{float(v):16.8f}" for v in values)
    return f'{indent}<v name="{name}">{text} </v>\n'


def _flatten_magmom(value: Any, n_atoms: int) -> list[float]:
    if value is None:
        return [1.0] * n_atoms
    if isinstance(value, int | float):
        return [float(value)] * n_atoms
    flat = []
    for item in value:
        if isinstance(item, list | tuple):
            flat.extend(float(x) for x in item)
        else:
            flat.append(float(item))
    return flat if len(flat) == n_atoms else (flat + [1.0] * n_atoms)[:n_atoms]


class _Vasprun:
    """Streamed vasprun.xml: header at start, one block per ionic step, footer at the end."""

    def __init__(self, path: Path, inp: _Inputs, params: dict[str, Any]):
        self.fh: TextIO = open(path, "w", encoding="iso-8859-1")
        self.inp = inp
        self.selective = inp.selective if not inp.selective.all() else None
        now = dt.datetime.now()
        w = self.fh.write
        w('<?xml version="1.0" encoding="ISO-8859-1"?>\n<modeling>\n <generator>\n')
        w('  <i name="program" type="string">vasp </i>\n')
        w('  <i name="version" type="string">6.4.2  </i>\n')
        w('  <i name="subversion" type="string">ionflow stand-in (toy potential) </i>\n')
        w('  <i name="platform" type="string">LinuxGNU </i>\n')
        w(f'  <i name="date" type="string">{now:%Y %m %d} </i>\n')
        w(f'  <i name="time" type="string">{now:%H:%M:%S} </i>\n </generator>\n')
        w(" <incar>\n")
        for key, value in inp.incar.items():
            if isinstance(value, list):
                flat = _flatten_magmom(value, len(inp.species)) if key == "MAGMOM" else value
                w(_xml_v(key, flat))
            else:
                w(_xml_i(key, value))
        w(" </incar>\n")
        self._kpoints()
        w(" <parameters>\n")
        for key, value in params.items():
            w(_xml_v(key, value) if isinstance(value, list) else _xml_i(key, value))
        w(" </parameters>\n")
        self._atominfo()
        self.structure(inp.cell, name="initialpos", indent=" ")
        self.fh.flush()

    def _kpoints(self) -> None:
        param, divisions = self.inp.kpoints
        w = self.fh.write
        w(f' <kpoints>\n  <generation param="{param}">\n')
        w('   <v type="int" name="divisions">' + "".join(f"{d:8d}" for d in divisions) + " </v>\n")
        w('   <v name="usershift">' + _v_line([0.0, 0.0, 0.0]) + " </v>\n")
        for i in range(3):
            vec = [1.0 / divisions[i] if j == i else 0.0 for j in range(3)]
            w(f'   <v name="genvec{i + 1}">' + _v_line(vec) + " </v>\n")
        w('   <v name="shift">' + _v_line([0.0, 0.0, 0.0]) + " </v>\n  </generation>\n")
        w('  <varray name="kpointlist" >\n   <v>' + _v_line([0.0, 0.0, 0.0]) + " </v>\n")
        w('  </varray>\n  <varray name="weights" >\n   <v>       1.00000000 </v>\n')
        w("  </varray>\n </kpoints>\n")

    def _atominfo(self) -> None:
        from ase.data import atomic_masses, atomic_numbers

        inp = self.inp
        w = self.fh.write
        w(f" <atominfo>\n  <atoms>{len(inp.species):8d} </atoms>\n")
        w(f"  <types>{len(inp.types):8d} </types>\n")
        w('  <array name="atoms" >\n   <dimension dim="1">ion</dimension>\n')
        w('   <field type="string">element</field>\n   <field type="int">atomtype</field>\n')
        w("   <set>\n")
        type_index = 0
        for k, (sym, count) in enumerate(inp.types):
            type_index = k + 1
            for _ in range(count):
                w(f"    <rc><c>{sym:2s}</c><c>{type_index:4d}</c></rc>\n")
        w("   </set>\n  </array>\n")
        w('  <array name="atomtypes" >\n   <dimension dim="1">type</dimension>\n')
        w('   <field type="int">atomspertype</field>\n   <field type="string">element</field>\n')
        w("   <field>mass</field>\n   <field>valence</field>\n")
        w('   <field type="string">pseudopotential</field>\n   <set>\n')
        for (sym, count), psp in zip(inp.types, inp.potcar_symbols, strict=True):
            mass = float(atomic_masses[atomic_numbers[sym]])
            zval = float(_zval(psp))
            w(
                f"    <rc><c>{count:4d}</c><c>{sym:2s}</c><c>{mass:16.8f}</c>"
                f"<c>{zval:16.8f}</c><c>  PAW_PBE {psp} 01Jan2000                  </c></rc>\n"
            )
        w("   </set>\n  </array>\n </atominfo>\n")

    def structure(self, cell: _Cell, name: str | None = None, indent: str = "  ") -> None:
        w = self.fh.write
        attr = f' name="{name}"' if name else ""
        w(f'{indent}<structure{attr} >\n{indent} <crystal>\n{indent}  <varray name="basis" >\n')
        for row in cell.lattice:
            w(f"{indent}   <v>{_v_line(row)} </v>\n")
        w(f'{indent}  </varray>\n{indent}  <i name="volume">{cell.volume:16.8f} </i>\n')
        w(f'{indent}  <varray name="rec_basis" >\n')
        for row in cell.reciprocal:
            w(f"{indent}   <v>{_v_line(row)} </v>\n")
        w(f'{indent}  </varray>\n{indent} </crystal>\n{indent} <varray name="positions" >\n')
        for frac in cell.frac:
            w(f"{indent}  <v>{_v_line(frac)} </v>\n")
        w(f"{indent} </varray>\n")
        if self.selective is not None:
            w(f'{indent} <varray type="logical" name="selective" >\n')
            for flags in self.selective:
                text = "  ".join("T" if f else "F" for f in flags)
                w(f'{indent}  <v type="logical" > {text} </v>\n')
            w(f"{indent} </varray>\n")
        w(f"{indent}</structure>\n")

    def calculation(
        self,
        structure: _Cell,
        energy_ev: float,
        forces: np.ndarray,
        stress_kbar: np.ndarray,
        md: dict[str, float] | None,
        elapsed_s: float,
    ) -> None:
        w = self.fh.write
        w(" <calculation>\n")
        for shift in (1.0, 0.01, 0.0):
            e = energy_ev + shift
            w(f'  <scstep>\n   <time name="dav">{elapsed_s:8.2f}{elapsed_s:8.2f}</time>\n')
            w("   <energy>\n")
            w(f'    <i name="e_fr_energy">{e:16.8f} </i>\n')
            w(f'    <i name="e_wo_entrp">{e:16.8f} </i>\n')
            w(f'    <i name="e_0_energy">{e:16.8f} </i>\n   </energy>\n  </scstep>\n')
        self.structure(structure)
        w('  <varray name="forces" >\n')
        for row in forces:
            w(f"   <v>{_v_line(row)} </v>\n")
        w('  </varray>\n  <varray name="stress" >\n')
        for row in stress_kbar:
            w(f"   <v>{_v_line(row)} </v>\n")
        w("  </varray>\n  <energy>\n")
        w(f'   <i name="e_fr_energy">{energy_ev:16.8f} </i>\n')
        w(f'   <i name="e_wo_entrp">{energy_ev:16.8f} </i>\n')
        w(f'   <i name="e_0_energy">{energy_ev:16.8f} </i>\n')
        if md is not None:
            for key in ("kinetic", "lattice kinetic", "nosepot", "nosekinetic", "total"):
                w(f'   <i name="{key}">{md[key]:16.8f} </i>\n')
        w("  </energy>\n")
        self._pending_time = elapsed_s
        self.fh.flush()

    def end_calculation(self, electronic: dict[str, Any] | None = None) -> None:
        w = self.fh.write
        if electronic is not None:
            self._electronic(electronic)
        w(f'  <time name="totalsc">{self._pending_time:8.2f}{self._pending_time:8.2f}</time>\n')
        w(" </calculation>\n")
        self.fh.flush()

    def _electronic(self, el: dict[str, Any]) -> None:
        w = self.fh.write
        ispin, nbands, efermi = el["ispin"], el["nbands"], el["efermi"]
        eigs, occs = el["eigenvalues"], el["occupations"]
        w('  <eigenvalues>\n   <array>\n    <dimension dim="1">band</dimension>\n')
        w('    <dimension dim="2">kpoint</dimension>\n    <dimension dim="3">spin</dimension>\n')
        w("    <field>eigene</field>\n    <field>occ</field>\n    <set>\n")
        for s in range(ispin):
            w(f'     <set comment="spin {s + 1}">\n      <set comment="kpoint 1">\n')
            for b in range(nbands):
                w(f"       <r>{eigs[b]:10.4f}{occs[b]:10.4f} </r>\n")
            w("      </set>\n     </set>\n")
        w("    </set>\n   </array>\n  </eigenvalues>\n")
        w('  <separator name="orbital magnetization" >\n  </separator>\n')
        w(f'  <dos>\n   <i name="efermi">{efermi:16.8f} </i>\n   <total>\n    <array>\n')
        w('     <dimension dim="1">gridpoints</dimension>\n')
        w('     <dimension dim="2">spin</dimension>\n')
        w("     <field>energy</field>\n     <field>total</field>\n     <field>integrated</field>\n")
        w("     <set>\n")
        grid = el["dos_energies"]
        for s in range(ispin):
            w(f'      <set comment="spin {s + 1}">\n')
            for e, d, i in zip(grid, el["dos"], el["idos"], strict=True):
                w(f"       <r>{e:11.4f}{d:12.4f}{i:12.4f} </r>\n")
            w("      </set>\n")
        w("     </set>\n    </array>\n   </total>\n  </dos>\n")

    def close(self, final_structure: _Cell) -> None:
        self.structure(final_structure, name="finalpos", indent=" ")
        self.fh.write("</modeling>\n")
        self.fh.close()


def _zval(psp: str) -> int:
    if psp in _ZVAL:
        return _ZVAL[psp]
    base = psp.split("_")[0]
    return _ZVAL.get(base, 4)  # unknown POTCAR: any number will do for a fake NELECT


def _fake_electronic(inp: _Inputs, ispin: int) -> dict[str, Any]:
    nelect = sum(_zval(p) * c for p, (_, c) in zip(inp.potcar_symbols, inp.types, strict=True))
    nions = len(inp.species)
    nbands = int(inp.get("NBANDS") or max(nelect // 2 + nions // 2, 8))
    nocc = min(nbands - 1, max(1, int(round(nelect / 2.0))))
    valence = np.linspace(-8.0, 0.0, nocc)
    conduction = np.linspace(FAKE_GAP_EV, FAKE_GAP_EV + 6.0, nbands - nocc)
    eigs = np.concatenate([valence, conduction])
    occs = np.concatenate([np.ones(nocc), np.zeros(nbands - nocc)])
    grid = np.linspace(-10.0, 10.0, 301)
    sigma = 0.2
    dos = np.zeros_like(grid)
    for e in eigs:
        dos += np.exp(-0.5 * ((grid - e) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    dos *= 2.0 / ispin
    idos = np.cumsum(dos) * (grid[1] - grid[0])
    return {
        "ispin": ispin,
        "nbands": nbands,
        "nelect": float(nelect),
        "efermi": 0.1,
        "eigenvalues": eigs,
        "occupations": occs,
        "dos_energies": grid,
        "dos": dos,
        "idos": idos,
    }


def _parameters(inp: _Inputs, el: dict[str, Any], mode: str) -> dict[str, Any]:
    """The ``<parameters>`` block: every INCAR key plus VASP's defaults that parsers use."""
    n = len(inp.species)
    ispin = el["ispin"]
    nsw = int(inp.get("NSW", 0))
    params: dict[str, Any] = {
        "SYSTEM": str(inp.get("SYSTEM", "unknown system")),
        "PREC": str(inp.get("PREC", "normal")).lower(),
        "ENMAX": float(inp.get("ENCUT", 400.0)),
        "EDIFF": float(inp.get("EDIFF", 1e-4)),
        "NELM": int(inp.get("NELM", 60)),
        "NELMIN": int(inp.get("NELMIN", 2)),
        "NELECT": float(el["nelect"]),
        "NBANDS": int(el["nbands"]),
        "ISPIN": int(ispin),
        "MAGMOM": _flatten_magmom(inp.get("MAGMOM"), n),
        "LNONCOLLINEAR": False,
        "LSORBIT": False,
        "ISMEAR": int(inp.get("ISMEAR", 1)),
        "SIGMA": float(inp.get("SIGMA", 0.2)),
        "NSW": nsw,
        "IBRION": int(inp.get("IBRION", -1 if nsw in (0, -1) else 0)),
        "ISIF": int(inp.get("ISIF", 0 if mode == "md" else 2)),
        "POTIM": float(inp.get("POTIM", 0.5)),
        "EDIFFG": float(inp.get("EDIFFG", float(inp.get("EDIFF", 1e-4)) * 10)),
        "ISYM": int(inp.get("ISYM", 2)),
        "NBLOCK": int(inp.get("NBLOCK", 1)),
        "KBLOCK": int(inp.get("KBLOCK", nsw or 1)),
        "GGA": str(inp.get("GGA", "--")),
        "LASPH": bool(inp.get("LASPH", False)),
        "LREAL": False,
        "LWAVE": bool(inp.get("LWAVE", True)),
        "LCHARG": bool(inp.get("LCHARG", True)),
        # VASP echoes every parameter; these defaults are read by pymatgen/emmet
        "ISTART": 0,
        "ICHARG": 2,
        "NUPDOWN": -1.0,
        "LORBIT": int(inp.get("LORBIT", 0) or 0),
        "NEDOS": 301,
        "LHFCALC": False,
        "LUSE_VDW": False,
        "LDAU": False,
        "AEXX": 0.0,
        "HFSCREEN": 0.0,
        "LEPSILON": False,
        "LCALCPOL": False,
        "LOPTICS": False,
        "METAGGA": "--",
    }
    if mode == "md":
        params.update(
            TEBEG=float(inp.get("TEBEG", 0.0)),
            TEEND=float(inp.get("TEEND", inp.get("TEBEG", 0.0))),
            SMASS=float(inp.get("SMASS", -3.0)),
            MDALGO=int(inp.get("MDALGO", 0)),
        )
    for key, value in inp.incar.items():  # anything else from the INCAR, as VASP echoes it
        if key not in params and not isinstance(value, dict):
            if isinstance(value, list):
                with contextlib.suppress(TypeError, ValueError):
                    params[key] = [float(v) for v in value]
            else:
                params[key] = value
    return params


def _write_outcar_header(fh: TextIO, inp: _Inputs, params: dict[str, Any], el: dict[str, Any]):
    n = len(inp.species)
    w = fh.write
    w(" vasp.6.4.2 (ionflow stand-in: toy potential, not DFT)\n")
    w(f" executed on             LinuxGNU date {dt.datetime.now():%Y.%m.%d  %H:%M:%S}\n")
    w(" running    1 mpi-ranks, with    1 threads/rank, on    1 nodes\n")
    for psp in inp.potcar_symbols:
        w(f"   POTCAR:    PAW_PBE {psp} 01Jan2000\n")
    w(f"   ions per type =   {' '.join(str(c) for _, c in inp.types)}\n")
    w(f"   NIONS =  {n:6d}\n")
    w(
        f"   k-points           NKPTS =      1   k-points in BZ     NKDIM =      1   "
        f"number of bands    NBANDS= {el['nbands']:6d}\n"
    )
    w("   dimension x,y,z NGX =    32 NGY =   32 NGZ =   32\n")
    w("   total plane-waves  NPLWV =   32768\n")
    w(f"   NELECT =  {el['nelect']:12.4f}    total number of electrons\n")
    w(f"   ENCUT  =  {params['ENMAX']:8.1f} eV\n")
    w(f"   NELM   =  {params['NELM']:6d};   NELMIN={params['NELMIN']:3d}\n")
    w(f"   EDIFF  = {params['EDIFF']:.1E}   stopping-criterion for ELM\n")
    w(f"   ISPIN  =  {params['ISPIN']:6d}    spin polarized calculation?\n")
    w(f"   NSW    =  {params['NSW']:6d}    number of steps for IOM\n")
    w(f"   IBRION =  {params['IBRION']:6d}    ionic relax: 0-MD 1-quasi-New 2-CG\n")
    w(f"   ISIF   =  {params['ISIF']:6d}    stress and relaxation\n")
    w(f"   POTIM  = {params['POTIM']:8.4f}    time-step for ionic-motion\n")
    if "TEBEG" in params:
        w(f"   TEBEG  = {params['TEBEG']:8.1f};   TEEND  = {params['TEEND']:8.1f} temperature\n")
        w(f"   SMASS  = {params['SMASS']:8.2f}    Nose mass-parameter (am)\n")
    w(f"   ISMEAR =  {params['ISMEAR']:6d};   SIGMA  = {params['SIGMA']:6.2f} broadening in eV\n")
    w("\n")
    fh.flush()


def _write_outcar_step(
    fh: TextIO,
    step: int,
    structure: _Cell,
    forces: np.ndarray,
    energy: float,
    stress_kbar: np.ndarray,
    elapsed: float,
    magmoms: list[float] | None,
    nelect: float,
    efermi: float,
) -> None:
    w = fh.write
    w(f"\n--------------------------------------- Iteration {step:6d}(   1)  ")
    w("---------------------------------------\n\n")
    w(f" E-fermi : {efermi:10.4f}     XC(G=0):  -1.0000     alpha+bet : -1.0000\n\n")
    total_mag = sum(magmoms) if magmoms is not None else 0.0
    w(f" number of electron {nelect:15.7f} magnetization {total_mag:15.7f}\n\n")
    w(f"      LOOP+:  cpu time {elapsed:10.4f}: real time {elapsed:10.4f}\n\n")
    s = stress_kbar
    w("  FORCE on cell =-STRESS in cart. coord.  units (eV):\n")
    w(
        f"  in kB  {s[0][0]:12.5f}{s[1][1]:12.5f}{s[2][2]:12.5f}"
        f"{s[0][1]:12.5f}{s[1][2]:12.5f}{s[2][0]:12.5f}\n\n"
    )
    w(" POSITION                                       TOTAL-FORCE (eV/Angst)\n")
    w(" " + "-" * 83 + "\n")
    for pos, frc in zip(structure.cart, forces, strict=True):
        w(" " + "".join(f"{x:12.5f}" for x in pos) + "    ")
        w("".join(f"{x:14.6f}" for x in frc) + "\n")
    w(" " + "-" * 83 + "\n")
    drift = forces.sum(axis=0) / max(len(forces), 1)
    w(f"    total drift:      {drift[0]:14.6f}{drift[1]:14.6f}{drift[2]:14.6f}\n\n")
    if magmoms is not None:
        w(" magnetization (x)\n\n")
        w("# of ion       s       p       d       tot\n")
        w("------------------------------------------\n")
        for k, m in enumerate(magmoms, start=1):
            w(f"{k:4d}        0.000   0.000{m:8.3f}{m:8.3f}\n")
        w("--------------------------------------------------\n")
        w(f"tot          0.000   0.000{sum(magmoms):8.3f}{sum(magmoms):8.3f}\n\n")
    w("  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)\n")
    w("  ---------------------------------------------------\n")
    w(f"  free  energy   TOTEN  = {energy:18.8f} eV\n\n")
    w(f"  energy  without entropy= {energy:18.8f}  energy(sigma->0) = {energy:18.8f}\n\n")
    fh.flush()


def _write_outcar_footer(fh: TextIO, elapsed: float, stopped: bool, mode: str, conv: bool):
    w = fh.write
    if stopped:
        w("\n LSTOP = .TRUE. found in STOPCAR: stopping the ionic loop\n")
    if mode == "relax" and conv:
        w("\n reached required accuracy - stopping structural energy minimisation\n")
    w("\n\n General timing and accounting informations for this job:\n")
    w(" ========================================================\n\n")
    w(f"                  Total CPU time used (sec):  {elapsed:12.3f}\n")
    w(f"                            User time (sec):  {elapsed:12.3f}\n")
    w("                          System time (sec):         0.000\n")
    w(f"                         Elapsed time (sec):  {elapsed:12.3f}\n\n")
    w("                   Maximum memory used (kb):       10000.\n")
    w("                   Average memory used (kb):          N/A\n\n")
    w("                          Minor page faults:          1000\n")
    w("                          Major page faults:             0\n")
    w("                 Voluntary context switches:           100\n")
    fh.flush()


def _write_poscar_like(path: Path, inp: _Inputs, cell: _Cell, velocities: np.ndarray | None):
    """CONTCAR as VASP writes it: Direct coordinates, flags, then Cartesian velocities (Å/fs)."""
    selective = not inp.selective.all()
    out = [inp.comment or inp.formula, "   1.00000000000000"]
    out += ["  " + "".join(f"{x:22.16f}" for x in row) for row in cell.lattice]
    out.append("   " + "".join(f"{sym:>5s}" for sym, _ in inp.types))
    out.append("   " + "".join(f"{n:5d}" for _, n in inp.types))
    if selective:
        out.append("Selective dynamics")
    out.append("Direct")
    for frac, flags in zip(cell.frac, inp.selective, strict=True):
        line = "".join(f"{x:20.16f}" for x in frac)
        if selective:
            line += "   " + "   ".join("T" if f else "F" for f in flags)
        out.append(line)
    if velocities is not None:
        out.append("")
        out += ["".join(f"{x:16.8E}" for x in v) for v in velocities]
    path.write_text("\n".join(out) + "\n")


class _Xdatcar:
    def __init__(self, path: Path, inp: _Inputs, nblock: int):
        self.fh = open(path, "w")
        self.nblock = max(1, nblock)
        self.header_written = False
        self.inp = inp

    def frame(self, step: int, structure: _Cell) -> None:
        if step % self.nblock:
            return
        w = self.fh.write
        if not self.header_written:
            w(f"{self.inp.formula}\n           1\n")
            for row in structure.lattice:
                w(f"    {row[0]:12.6f}{row[1]:12.6f}{row[2]:12.6f}\n")
            w("   " + "".join(f"{sym:>4s}" for sym, _ in self.inp.types) + "\n")
            w("   " + "".join(f"{c:4d}" for _, c in self.inp.types) + "\n")
            self.header_written = True
        w(f"Direct configuration= {step:5d}\n")
        for frac in structure.frac:
            w(f"  {frac[0]:.8f}  {frac[1]:.8f}  {frac[2]:.8f}\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


# --------------------------------------------------------------------- dynamics


def _free_dof(n_atoms: int, n_fixed: int) -> int:
    """Kinetic degrees of freedom, as :func:`ionflow.structure.free_degrees_of_freedom`:
    ``3 N - 3`` (momentum conserved) without fixed atoms, ``3 (N - N_fixed)`` with."""
    return max(3 * n_atoms - 3 if n_fixed == 0 else 3 * (n_atoms - n_fixed), 1)


class _NoseHoover:
    """One Nosé-Hoover thermostat over ``n_dof`` degrees of freedom (Trotter half steps)."""

    def __init__(self, n_dof: int, kt: float, tdamp: float):
        self.n_dof = n_dof
        self.kt = kt
        self.q = n_dof * kt * tdamp**2
        self.xi = 0.0  # thermostat momentum / Q
        self.eta = 0.0  # thermostat position

    def half_step(self, p: np.ndarray, masses: np.ndarray, dt2: float) -> np.ndarray:
        twice_kinetic = float(np.sum(p**2 / masses))
        self.xi += 0.5 * dt2 * (twice_kinetic - self.n_dof * self.kt) / self.q
        scale = np.exp(-self.xi * dt2)
        self.eta += self.xi * dt2
        p = p * scale
        self.xi += 0.5 * dt2 * (twice_kinetic * scale**2 - self.n_dof * self.kt) / self.q
        return p

    def energy(self) -> float:
        return self.n_dof * self.kt * self.eta + 0.5 * self.q * self.xi**2


class _Engine:
    """ASE atoms + the cheap calculator; positions in, energies/forces/stress out."""

    def __init__(self, inp: _Inputs, potential: str):
        from ase import Atoms

        from ionflow.potentials import get_calculator

        self.atoms = Atoms(
            symbols=inp.species, cell=inp.cell.lattice, scaled_positions=inp.cell.frac, pbc=True
        )
        self.atoms.calc = get_calculator(potential)
        self.inp = inp
        self.fixed = np.flatnonzero(~inp.selective.any(axis=1))
        self.move_mask = inp.selective.astype(float)
        self.n_dof = _free_dof(len(self.atoms), len(self.fixed))

    def structure(self) -> _Cell:
        lattice = self.atoms.cell.array.copy()
        return _Cell(lattice, self.atoms.get_positions() @ np.linalg.inv(lattice))

    def evaluate(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV, with the offset), forces (eV/Å, masked), stress (kbar, VASP sign)."""
        energy = float(self.atoms.get_potential_energy())
        energy += ENERGY_OFFSET_EV_PER_ATOM * len(self.atoms)
        forces = self.atoms.get_forces() * self.move_mask
        try:
            voigt = self.atoms.get_stress(voigt=False)
            stress = -np.asarray(voigt) * _EV_A3_TO_KBAR
        except Exception:
            stress = np.zeros((3, 3))
        return energy, forces, stress


def _seed(inp: _Inputs) -> int:
    value = inp.get("RANDOM_SEED", 0)
    if isinstance(value, list):
        value = value[0] if value else 0
    try:
        return abs(int(value))
    except (TypeError, ValueError):
        return 0


def _mb_momenta(atoms: Any, fixed: np.ndarray, temperature_k: float, seed: int, n_dof: int):
    from ase import units

    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    kt = units.kB * temperature_k
    p = rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * kt)
    p[fixed] = 0.0
    if fixed.size == 0:
        p -= masses * (p.sum(axis=0) / masses.sum())
    kin = 0.5 * float(np.sum(p**2 / masses))
    if kin > 0 and temperature_k > 0:
        p *= np.sqrt(0.5 * n_dof * kt / kin)
    else:
        p[:] = 0.0
    return p


def _run_md(eng: _Engine, out: _Outputs, step_delay: float) -> tuple[int, bool]:
    from ase import units

    inp = eng.inp
    atoms = eng.atoms
    nsw = int(inp.get("NSW", 0))
    dt_fs = float(inp.get("POTIM", 0.5))
    dt = dt_fs * units.fs
    tebeg = float(inp.get("TEBEG", 0.0))
    teend = float(inp.get("TEEND", tebeg))
    smass = float(inp.get("SMASS", -3.0))
    mdalgo = int(inp.get("MDALGO", 0))
    masses = atoms.get_masses()[:, None]
    fixed = eng.fixed
    free_mask = eng.move_mask
    remove_net = fixed.size == 0
    seed = _seed(inp)
    if inp.velocities_a_fs is not None:
        p = masses * inp.velocities_a_fs / units.fs * free_mask  # Å/fs -> ASE units
    else:
        p = _mb_momenta(atoms, fixed, tebeg, seed, eng.n_dof)
    nve = smass <= -3 or (mdalgo == 1 and float(inp.get("ANDERSEN_PROB", 0.0)) == 0.0)
    langevin = mdalgo == 3
    gamma = inp.get("LANGEVIN_GAMMA", [10.0])
    gamma_ps = float(np.mean(gamma if isinstance(gamma, list) else [gamma]))
    rng = np.random.default_rng([seed, 1])
    thermostat = None
    if not nve and not langevin:
        thermostat = _NoseHoover(eng.n_dof, units.kB * max(tebeg, 1e-6), NOSE_PERIOD_STEPS * dt)

    def forces_at() -> tuple[float, np.ndarray, np.ndarray]:
        energy, forces, stress = eng.evaluate()
        if remove_net:
            forces = forces - masses * (forces.sum(axis=0) / masses.sum())
        return energy, forces, stress

    t0 = time.monotonic()
    energy, forces, stress = forces_at()
    done = 0
    stopped = False
    for step in range(1, nsw + 1):
        target = tebeg + (teend - tebeg) * (step - 1) / max(nsw, 1)
        if thermostat is not None and teend != tebeg:
            thermostat.kt = units.kB * max(target, 1e-6)  # ramp TEBEG → TEEND as VASP does
        kinetic = 0.5 * float(np.sum(p**2 / masses))
        temp = 2.0 * kinetic / (eng.n_dof * units.kB)
        structure = eng.structure()
        nose = thermostat.energy() if thermostat is not None else 0.0
        md = {
            "kinetic": kinetic,
            "lattice kinetic": 0.0,
            "nosepot": nose,
            "nosekinetic": 0.0,
            "total": energy + kinetic + nose,
        }
        elapsed = time.monotonic() - t0
        out.step(step, structure, energy, forces, stress, elapsed, md=md, temperature=temp)
        done = step
        # advance one step (positions at `step` → `step + 1`)
        half = 0.5 * dt
        if thermostat is not None:
            p = thermostat.half_step(p, masses, half)
        p = p + half * forces
        q = atoms.get_positions() + dt * p / masses * free_mask
        atoms.set_positions(q)
        energy, forces, stress = forces_at()
        p = (p + half * forces) * free_mask
        if thermostat is not None:
            p = thermostat.half_step(p, masses, half) * free_mask
        if langevin:
            c = np.exp(-gamma_ps * 1e-3 * dt_fs)
            kt = units.kB * target
            noise = rng.standard_normal(p.shape) * np.sqrt((1 - c * c) * masses * kt)
            p = (c * p + noise) * free_mask
        if step_delay > 0:
            time.sleep(step_delay)
        if step < nsw and _stop_requested(out.directory):
            stopped = True
            break
    velocities = p / masses * units.fs  # ASE units -> Å/fs
    out.finish(eng.structure(), velocities, done, stopped, converged=done == nsw)
    return done, stopped


def _run_relax(eng: _Engine, out: _Outputs, step_delay: float) -> tuple[int, bool, bool]:
    from ase.constraints import FixAtoms
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    inp = eng.inp
    nsw = int(inp.get("NSW", 0))
    isif = int(inp.get("ISIF", 2))
    ediffg = float(inp.get("EDIFFG", float(inp.get("EDIFF", 1e-4)) * 10))
    atoms = eng.atoms
    if eng.fixed.size:
        atoms.set_constraint(FixAtoms(indices=eng.fixed))
    target = FrechetCellFilter(atoms) if isif >= 3 else atoms
    opt = BFGS(target, logfile=None, maxstep=0.1)
    t0 = time.monotonic()
    prev_energy = None
    converged = stopped = False
    done = 0
    for step in range(1, max(nsw, 1) + 1):
        energy, forces, stress = eng.evaluate()
        out.step(step, eng.structure(), energy, forces, stress, time.monotonic() - t0)
        done = step
        generalised = target.get_forces()  # atoms (constrained) + cell degrees of freedom
        fmax = float(np.sqrt((generalised**2).sum(axis=1)).max()) if len(generalised) else 0.0
        if ediffg < 0:
            converged = fmax < abs(ediffg)
        else:
            converged = prev_energy is not None and abs(energy - prev_energy) < ediffg
        prev_energy = energy
        if nsw <= 0 or converged:
            break
        if step < nsw:
            if step_delay > 0:
                time.sleep(step_delay)
            if _stop_requested(out.directory):
                stopped = True
                break
            opt.step()
    atoms.set_constraint()
    out.finish(eng.structure(), None, done, stopped, converged=converged)
    return done, stopped, converged


class _Outputs:
    """All output files of one run, written as the run goes."""

    def __init__(self, directory: Path, inp: _Inputs, mode: str, stdout: TextIO):
        self.directory = directory
        self.inp = inp
        self.mode = mode
        self.stdout = stdout
        ispin = int(inp.get("ISPIN", 1))
        self.electronic = _fake_electronic(inp, ispin)
        self.params = _parameters(inp, self.electronic, mode)
        self.vasprun = _Vasprun(directory / "vasprun.xml", inp, self.params)
        self.outcar = open(directory / "OUTCAR", "w")
        _write_outcar_header(self.outcar, inp, self.params, self.electronic)
        self.oszicar = open(directory / "OSZICAR", "w")
        self.xdatcar = _Xdatcar(directory / "XDATCAR", inp, int(inp.get("NBLOCK", 1)))
        self.magmoms = _flatten_magmom(inp.get("MAGMOM"), len(inp.species)) if ispin == 2 else None
        self.prev_energy = 0.0
        self.t0 = time.monotonic()
        self._calc_open = False
        print(" running on    1 total cores (ionflow VASP stand-in, toy potential)", file=stdout)
        print(f" POSCAR found :  {len(inp.types)} types and {len(inp.species)} ions", file=stdout)
        stdout.flush()

    def step(
        self,
        step: int,
        structure: Any,
        energy: float,
        forces: np.ndarray,
        stress: np.ndarray,
        elapsed: float,
        md: dict[str, float] | None = None,
        temperature: float | None = None,
    ) -> None:
        if self._calc_open:
            self.vasprun.end_calculation()
        self.vasprun.calculation(structure, energy, forces, stress, md, elapsed)
        self._calc_open = True
        _write_outcar_step(
            self.outcar,
            step,
            structure,
            forces,
            energy,
            stress,
            elapsed,
            self.magmoms,
            self.electronic["nelect"],
            self.electronic["efermi"],
        )
        self.xdatcar.frame(step, structure)
        osz = self.oszicar.write
        osz(_OSZICAR_HEADER)
        for k, shift in enumerate((1.0, 0.01, 0.0), start=1):
            osz(
                f"DAV: {k:3d}    {energy + shift:.8E}   {shift if k > 1 else energy:.5E}   "
                f"{-shift:.5E}    16   {abs(shift):.3E}\n"
            )
        mag = f"  mag= {sum(self.magmoms):8.4f}" if self.magmoms is not None else ""
        if md is not None:
            line = (
                f"{step:6d} T= {temperature:8.1f} E= {md['total']:.8E} F= {energy:.8E} "
                f"E0= {energy:.8E}  EK= {md['kinetic']:.5E} SP= {md['nosepot']:.2E} "
                f"SK= {md['nosekinetic']:.2E}{mag}\n"
            )
        else:
            d_e = energy - self.prev_energy
            line = f"{step:4d} F= {energy:.8E} E0= {energy:.8E}  d E ={d_e:.6E}{mag}\n"
        self.prev_energy = energy
        osz(line)
        self.oszicar.flush()
        self.stdout.write(line)
        self.stdout.flush()

    def finish(
        self,
        final_structure: Any,
        velocities: np.ndarray | None,
        done: int,
        stopped: bool,
        converged: bool,
    ) -> None:
        elapsed = time.monotonic() - self.t0
        if self._calc_open:
            self.vasprun.end_calculation(self.electronic)
        self.vasprun.close(final_structure)
        _write_outcar_footer(self.outcar, elapsed, stopped, self.mode, converged)
        self.outcar.close()
        self.oszicar.close()
        self.xdatcar.close()
        _write_poscar_like(self.directory / "CONTCAR", self.inp, final_structure, velocities)
        if stopped:
            print(" LSTOP = .TRUE. in STOPCAR: stop at this ionic step", file=self.stdout)
        if self.mode == "relax" and converged:
            print(
                " reached required accuracy - stopping structural energy minimisation",
                file=self.stdout,
            )
        print(f" writing wavefunctions ... done ({done} ionic steps)", file=self.stdout)
        self.stdout.flush()


# -------------------------------------------------------------------------- entry


def run(
    directory: str | Path = ".",
    potential: str | None = None,
    step_delay_s: float | None = None,
    stdout: TextIO | None = None,
) -> StandinResult:
    """Run the stand-in in ``directory`` (see the module docstring).

    Parameters
    ----------
    directory
        VASP run directory with INCAR and POSCAR (KPOINTS, POTCAR.spec optional).
    potential
        ionflow potential name; default ``$IONFLOW_STANDIN_POTENTIAL`` or ``"toy"``.
    step_delay_s
        Sleep per ionic step, s; default ``$IONFLOW_STANDIN_STEP_DELAY_S`` or 0.
    stdout
        Where VASP-like progress lines go (default ``sys.stdout``).

    Returns
    -------
    StandinResult
    """
    directory = Path(directory)
    potential = potential or os.environ.get("IONFLOW_STANDIN_POTENTIAL", "toy")
    if step_delay_s is None:
        step_delay_s = float(os.environ.get("IONFLOW_STANDIN_STEP_DELAY_S", "0") or 0)
    stdout = stdout or sys.stdout
    inp = _read_inputs(directory)
    nsw = int(inp.get("NSW", 0))
    ibrion = int(inp.get("IBRION", -1 if nsw in (0, -1) else 0))
    mode = "md" if ibrion == 0 and nsw > 0 else "relax" if nsw > 0 and ibrion > 0 else "static"
    eng = _Engine(inp, potential)
    out = _Outputs(directory, inp, mode, stdout)
    converged = True
    if mode == "md":
        done, stopped = _run_md(eng, out, step_delay_s)
        converged = done == nsw
    else:
        if mode == "static":
            inp.incar["NSW"] = 0
        done, stopped, converged = _run_relax(eng, out, step_delay_s)
    files = ["vasprun.xml", "OUTCAR", "OSZICAR", "CONTCAR", "XDATCAR"]
    return StandinResult(mode, done, stopped, converged, files)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: ``python -m ionflow.vasp_standin [--dir D] [--potential P]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ionflow.vasp_standin",
        description="VASP stand-in: run the ionic loop of INCAR/POSCAR with a cheap potential "
        "and write vasprun.xml, OUTCAR, OSZICAR, CONTCAR, XDATCAR (not DFT).",
    )
    parser.add_argument("--dir", default=".", help="run directory (default: .)")
    parser.add_argument("--potential", default=None, help="ionflow potential (default: toy)")
    parser.add_argument("--step-delay", type=float, default=None, help="sleep per step, s")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")  # stderr is std_err.txt, which custodian scans for errors
    try:
        result = run(args.dir, args.potential, args.step_delay)
    except FileNotFoundError as exc:
        print(f"ionflow VASP stand-in: missing input file: {exc.filename}", file=sys.stderr)
        return 1
    del result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
