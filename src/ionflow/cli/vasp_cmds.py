"""``ionflow inputs FILE --out DIR``: the VASP inputs of a campaign, written without running.

For every material and every VASP job (``engine.relax: vasp`` and/or ``engine.md: vasp``)
the command writes ``DIR/<material>/<job-tag>/`` with ``INCAR``, ``KPOINTS``, ``POTCAR.spec``
and ``POSCAR`` exactly as atomate2 would write them in the job (MD segments after the first
get a ``POSCAR.from`` note instead: their POSCAR is the previous segment's CONTCAR), plus
``DIR/<material>/plan.json`` (tags, atom counts, NSW per segment, INCAR overrides). No POTCAR
files are needed; real runs need them through pymatgen's ``PMG_VASP_PSP_DIR``.

Job tags: ``relax``; ``md_<variant>_<T>K_s<NN>`` (e.g. ``md_pinned_600K_s01``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ionflow.cli import app


def write_campaign_inputs(
    spec_file: Path, out: Path, materials: list[str] | None = None
) -> dict[str, list[dict]]:
    """Write the inputs of every VASP job of the campaign in ``spec_file`` under ``out``.

    Returns
    -------
    dict
        ``{material: [job summary, ...]}`` (what ``plan.json`` holds per material).

    Raises
    ------
    UserInputError
        Invalid campaign file, no VASP engine, or an unknown material name.
    """
    import warnings

    from ionflow.errors import UserInputError
    from ionflow.makers.vasp import planned_vasp_jobs
    from ionflow.spec import load_campaign
    from ionflow.vasp import PROTOCOL_NAME

    spec, resolved = load_campaign(spec_file)
    if "vasp" not in (spec.engine.relax, spec.engine.md):
        raise UserInputError(
            f"{spec_file}: engine: relax={spec.engine.relax}, md={spec.engine.md}: no VASP job "
            "to write inputs for (use engine: {relax: vasp, md: vasp})"
        )
    names = [m.name for m in resolved]
    if materials:
        unknown = [m for m in materials if m not in names]
        if unknown:
            raise UserInputError(
                f"unknown material(s) {', '.join(unknown)}; the campaign has {', '.join(names)}"
            )
        resolved = [m for m in resolved if m.name in materials]
    summary: dict[str, list[dict]] = {}
    for mat in resolved:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen's BadInputSetWarning chatter
            jobs = planned_vasp_jobs(spec, mat)
            rows = []
            for planned in jobs:
                directory = planned.write(out / mat.name / planned.tag)
                rows.append(
                    {
                        "tag": planned.tag,
                        "stage": planned.stage,
                        "directory": str(directory.relative_to(out / mat.name)),
                        "poscar": "POSCAR" if planned.poscar else planned.note,
                        "incar_overrides": planned.overrides,
                        **planned.info,
                    }
                )
        plan = {
            "campaign": spec.campaign,
            "material": mat.name,
            "formula": mat.formula,
            "engine": spec.engine.model_dump(mode="json"),
            "protocol": PROTOCOL_NAME,
            "potcars": "POTCAR.spec lists PBE_54 POTCAR symbols; real runs need PMG_VASP_PSP_DIR",
            "jobs": rows,
        }
        (out / mat.name).mkdir(parents=True, exist_ok=True)
        (out / mat.name / "plan.json").write_text(json.dumps(plan, indent=1, default=str) + "\n")
        summary[mat.name] = rows
    return summary


@app.command("inputs")
def inputs_cmd(
    spec_file: Annotated[Path, typer.Argument(help="workflows.yaml")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the inputs to")],
    material: Annotated[
        list[str] | None, typer.Option("--material", "-m", help="Only these materials")
    ] = None,
) -> None:
    """Write the VASP input set of every VASP job the campaign would run (nothing runs)."""
    from rich.console import Console
    from rich.table import Table

    summary = write_campaign_inputs(spec_file, out, material)
    tab = Table(title=f"VASP inputs in {out}")
    for col in ("material", "job tags", "atoms", "pinned", "NSW per segment", "INCAR overrides"):
        tab.add_column(col)
    for name, rows in summary.items():
        groups: dict[str, list[dict]] = {}
        for row in rows:  # one line per run: its segments s01..sNN together
            groups.setdefault(
                row["tag"].rsplit("_s", 1)[0] if row["stage"] == "md" else row["tag"], []
            ).append(row)
        for i, (key, group) in enumerate(groups.items()):
            first = group[0]
            tags = first["tag"] if len(group) == 1 else f"{key}_s01 … _s{len(group):02d}"
            nsw = [r.get("nsw") for r in group if r.get("nsw") is not None]
            nsw_text = ""
            if nsw:
                nsw_text = (
                    f"{len(nsw)} × {nsw[0]}" if len(set(nsw)) == 1 else " + ".join(map(str, nsw))
                )
            tab.add_row(
                name if i == 0 else "",
                tags,
                str(first.get("n_atoms", "")),
                str(first.get("n_pinned", "")) if first["stage"] == "md" else "",
                nsw_text,
                ", ".join(f"{k}={v['value']}" for k, v in first["incar_overrides"].items()) or "—",
            )
    con = Console()
    con.print(tab)
    con.print(
        "POTCAR.spec lists the POTCAR symbols (PBE_54); real runs need the POTCAR files "
        "(pymatgen PMG_VASP_PSP_DIR)."
    )
