"""Campaign-file commands: ``ionflow validate FILE``."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ionflow.cli import app

if TYPE_CHECKING:
    from ionflow.spec import CampaignSpec, ResolvedMaterial


def _supercell_text(matrix: list[list[int]]) -> str:
    """``2×2×2`` for a diagonal matrix, else the full matrix on one line."""
    diagonal = all(matrix[i][j] == 0 for i in range(3) for j in range(3) if i != j)
    if diagonal:
        return "×".join(str(matrix[i][i]) for i in range(3))
    return "[" + ", ".join("[" + " ".join(str(x) for x in row) + "]" for row in matrix) + "]"


def _temperatures_text(temperatures_k: list[float]) -> str:
    return ", ".join(f"{t:g}" for t in temperatures_k)


def _pinned_summary(material: ResolvedMaterial) -> dict[str, Any]:
    """What the pinned control pins in the input cell and in the supercell."""
    by_element = Counter(material.structure[i].specie.symbol for i in material.pinned_indices)
    control = material.md.pinned_control_arg
    mode = control if isinstance(control, str) else "species"
    mult = material.supercell_multiplicity
    return {
        "mode": mode,
        "n_pinned_input_cell": len(material.pinned_indices),
        "n_pinned_supercell": len(material.pinned_indices) * mult,
        "by_element_input_cell": dict(sorted(by_element.items())),
        "reason": material.pinned_reason,
    }


def _pinned_text(material: ResolvedMaterial) -> str:
    info = _pinned_summary(material)
    if not info["n_pinned_input_cell"]:
        reason = info["reason"] or ("pinned_control: off" if info["mode"] == "off" else "")
        return f"none: {reason}" if reason else "none"
    counts = ", ".join(f"{n} {el}" for el, n in info["by_element_input_cell"].items())
    label = "bonded" if info["mode"] == "auto" else "listed"
    return f"{counts} ({label})"


def campaign_summary(
    spec: CampaignSpec, materials: list[ResolvedMaterial], file: Path | str
) -> dict[str, Any]:
    """JSON-ready summary of a validated campaign (what ``validate --json`` prints)."""
    from ionflow.spec import planned_jobs

    rows = []
    for m in materials:
        jobs = planned_jobs(spec, m)
        rows.append(
            {
                "name": m.name,
                "structure_path": str(m.structure_path),
                "formula": m.formula,
                "n_atoms_input": m.n_sites,
                "supercell_matrix": m.supercell_matrix,
                "n_atoms_supercell": m.n_sites_supercell,
                "temperatures_k": list(m.md.temperatures_k),
                "md": m.md.model_dump(mode="json"),
                "pinned_control": _pinned_summary(m),
                "jobs": jobs,
                "n_jobs": sum(jobs.values()),
            }
        )
    return {
        "file": str(file),
        "campaign": spec.campaign,
        "mobile_species": spec.mobile_species,
        "engine": spec.engine.model_dump(mode="json"),
        "execution": spec.execution.model_dump(mode="json"),
        "materials": rows,
        "n_materials": len(rows),
        "n_jobs": sum(r["n_jobs"] for r in rows),
    }


def _print_table(summary: dict[str, Any], materials: list[ResolvedMaterial]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    engine = summary["engine"]
    table = Table(
        title=(
            f"campaign {summary['campaign']}: mobile {summary['mobile_species']}, "
            f"relax {engine['relax']}, MD {engine['md']}, "
            f"execution {summary['execution']['mode']}"
        ),
        title_justify="left",
    )
    table.add_column("material", no_wrap=True)
    table.add_column("formula", no_wrap=True)
    table.add_column("atoms", justify="right")
    table.add_column("supercell", no_wrap=True)
    table.add_column("atoms (super)", justify="right")
    table.add_column("T (K)")
    table.add_column("pinned control (input cell)")
    table.add_column("jobs", justify="right")
    for row, material in zip(summary["materials"], materials, strict=True):
        table.add_row(
            row["name"],
            row["formula"],
            str(row["n_atoms_input"]),
            _supercell_text(row["supercell_matrix"]),
            str(row["n_atoms_supercell"]),
            _temperatures_text(row["temperatures_k"]),
            _pinned_text(material),
            str(row["n_jobs"]),
        )
    console.print(table)
    n = summary["n_materials"]
    by_kind: Counter[str] = Counter()
    for row in summary["materials"]:
        by_kind.update(row["jobs"])
    labels = {"md": "MD", "pinned_md": "pinned MD", "arrhenius": "Arrhenius"}
    parts = ", ".join(f"{v} {labels.get(k, k)}" for k, v in by_kind.items() if v)
    console.print(f"total: {n} material{'s' if n != 1 else ''}, {summary['n_jobs']} jobs ({parts})")


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="The campaign file (workflows.yaml).")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")
    ] = False,
) -> None:
    """Check a campaign file (keys, values, structures, pinned control) and show the plan.

    Every problem is reported at once (one per line, naming the file, material and key);
    exit status 2 when there is any.
    """
    from ionflow.spec import load_campaign

    spec, materials = load_campaign(file)
    summary = campaign_summary(spec, materials, file)
    if json_output:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary, materials)
