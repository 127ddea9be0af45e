# ruff: noqa: F811
"""``md.target`` and ``temperatures_k: {auto: …}`` in workflows.yaml, and the reuse keys of
targeted campaigns (ionflow.spec, ionflow.plan)."""

from __future__ import annotations

import pytest

from ionflow.plan import stage_keys
from ionflow.spec import load_campaign
from tests.test_spec import _has, _minimal, _problems, _run_main, _structure_files, camp  # noqa: F401 (fixtures)

TARGET = (
    "{diffusivity_rel_err: 0.15, extend_ps: 2, max_production_ps: 20, sigma_at_t_factor: 3, "
    "max_temperatures: 6, budget_core_hours: 500}"
)


def _md(target: str | None = None, temps: str = "[600, 800]") -> str:
    t = f", target: {target}" if target else ""
    return f"{{temperatures_k: {temps}, production_ps: 2, equilibration_ps: 0.1{t}}}"


def test_target_and_auto_ladder_load(camp):
    spec, mats = load_campaign(
        camp(_minimal(_md(TARGET, "{auto: {min: 500, max: 1100, count: 4}}")))
    )
    md = mats[0].md
    assert md.temperatures_k == [500.0, 700.0, 900.0, 1100.0]
    tg = md.adaptive_target()
    assert (tg.extend_ps, tg.max_production_ps, tg.sigma_at_t_factor) == (2, 20, 3)
    assert tg.max_temperature_k == 1400 and tg.first_chunk_ps == 2
    # extend_ps defaults to production_ps
    spec, mats = load_campaign(camp(_minimal(_md("{diffusivity_rel_err: 0.2}"))))
    assert mats[0].md.adaptive_target().extend_ps == 2


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("{extend_ps: -1}", ("md.target.extend_ps", "must be > 0")),
        ("{extend_pss: 1}", ("md.target", "extend_pss")),
        ("{max_production_ps: 1}", ("md.target", "max_production_ps: must be ≥ production_ps")),
        ("{sigma_at_t_factor: 1}", ("md.target", "sigma_at_t_factor: must be > 1")),
        ("{extend_ps: 2.001}", ("md.target", "extend_ps: must be a whole number of saved frames")),
        ("{max_temperatures: 0}", ("md.target.max_temperatures", "must be > 0")),
        ("{max_temperature_k: 700}", ("md.target", "max_temperature_k: must be ≥ the highest")),
        ("{diffusivity_rel_err: '0.1'}", ("md.target.diffusivity_rel_err",)),
    ],
)
def test_bad_target_one_line_naming_the_key(camp, target, fragments):
    lines = _problems(camp(_minimal(_md(target))))
    assert len(lines) == 1
    _has(lines, *fragments)


@pytest.mark.parametrize(
    ("temps", "fragment"),
    [
        ("{auto: {min: 500, max: 1100}}", "auto: needs exactly min, max and count (missing count)"),
        ("{auto: {min: 500, max: 400, count: 3}}", "auto.max: must be > auto.min (500 K)"),
        ("{auto: {min: -5, max: 400, count: 3}}", "auto.min: must be a temperature > 0 K"),
        ("{auto: {min: 500, max: 900, count: 0}}", "auto.count: must be a whole number ≥ 1"),
        ("{ladder: 3}", "give a list of temperatures or {auto: {min, max, count}}"),
    ],
)
def test_bad_auto_ladder(camp, temps, fragment):
    lines = _problems(camp(_minimal(_md(None, temps))))
    assert len(lines) == 1
    _has(lines, "md.temperatures_k", fragment)


def test_cli_bad_target_exit_2(camp, capsys):
    assert _run_main(["validate", str(camp(_minimal(_md("{extend_ps: -1}"))))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "md.target.extend_ps: must be > 0" in err


def test_per_material_target_override(camp):
    mats = (
        "  - {name: LiCl, structure: structures/LiCl.cif, "
        "md: {target: {diffusivity_rel_err: 0.05}}}\n"
    )
    spec, resolved = load_campaign(camp(_minimal(_md(TARGET), mats=mats)))
    tg = resolved[0].md.adaptive_target()
    assert tg.diffusivity_rel_err == 0.05
    assert tg.sigma_at_t_factor is None  # the material's target replaces the campaign's whole


def test_keys_without_target_unchanged_and_target_keys_from_arrhenius_on(camp):
    """MD and analysis keys ignore the target (a tighter target extends the same runs); the
    Arrhenius and summary keys change with it (its controller decides anew)."""
    spec, (plain,) = load_campaign(camp(_minimal(_md()), "a.yaml"))
    base = stage_keys(spec, plain)
    spec_t, (tgt,) = load_campaign(camp(_minimal(_md(TARGET)), "b.yaml"))
    keyed = stage_keys(spec_t, tgt)
    spec_u, (tighter,) = load_campaign(
        camp(_minimal(_md(TARGET.replace("0.15", "0.05"))), "c.yaml")
    )
    tight = stage_keys(spec_u, tighter)
    for stage in base:
        same = stage[0] in ("relax", "supercell", "md", "analysis")
        assert (base[stage] == keyed[stage]) is same, stage
        assert (keyed[stage] == tight[stage]) is same, stage
