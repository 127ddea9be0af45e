"""The streamed-analysis framework: one pass, several registered analyses."""

from __future__ import annotations

import numpy as np
import pytest

from ionflow.analysis import (
    ANALYSES,
    Diffusion,
    analyze_arrays,
    analyze_in_memory,
    get_analysis,
)
from ionflow.analysis.framework_msd import FrameworkMSD
from ionflow.errors import UserInputError

BOX = 30.0


def _trajectory(seed: int = 1, n_frames: int = 1500):
    """16 Li random walkers; 8 S rattling (iid Gaussian, 0.1 Å per axis) on fixed sites;
    4 P that never move (pinned)."""
    rng = np.random.default_rng(seed)
    li = rng.uniform(0, BOX, (1, 16, 3)) + np.cumsum(rng.normal(0, 0.1, (n_frames, 16, 3)), 0)
    s = rng.uniform(0, BOX, (1, 8, 3)) + rng.normal(0, 0.1, (n_frames, 8, 3))
    p = np.repeat(rng.uniform(0, BOX, (1, 4, 3)), n_frames, axis=0)
    pos = np.concatenate([li, s, p], axis=1) % BOX
    species = ["Li"] * 16 + ["S"] * 8 + ["P"] * 4
    fixed = np.array([False] * 24 + [True] * 4)
    return pos, species, fixed


def test_registry_names_the_analyses() -> None:
    assert ANALYSES["diffusion"] is Diffusion
    assert ANALYSES["framework-msd"] is FrameworkMSD
    assert {"rotation", "vdos", "density", "jumps"} <= set(ANALYSES)
    with pytest.raises(UserInputError, match="unknown analysis 'paddle-wheel'.*diffusion"):
        get_analysis("paddle-wheel")


def test_one_pass_feeds_two_analyses_and_diffusion_is_unchanged() -> None:
    pos, species, fixed = _trajectory()
    kw = dict(species="Li", temperature_k=600.0, frame_interval_fs=10.0)
    both = analyze_in_memory(
        pos, np.eye(3) * BOX, species, [Diffusion(), FrameworkMSD()], fixed_atoms=fixed,
        drift_reference="framework", **kw,
    )  # fmt: skip
    alone = analyze_arrays(
        pos, np.eye(3) * BOX, species, fixed_atoms=fixed, drift_reference="framework", **kw
    )
    assert both["diffusion"].model_dump() == alone.model_dump()
    fw = {s.element: s for s in both["framework-msd"].species}
    assert set(fw) == {"S", "P"}
    # iid rattle of σ = 0.1 Å per axis about fixed sites; the drift removed is the
    # mass-weighted mean displacement of the 12 framework atoms (weights w_S, w_P), so per
    # axis Var = 2σ²[(1 − w_S)² + 7 w_S²] for an S atom and 2σ²·8 w_S² for a P atom
    m_s, m_p = 32.06, 30.974
    w_s = m_s / (8 * m_s + 4 * m_p)
    msd_s = 3 * 2 * 0.01 * ((1 - w_s) ** 2 + 7 * w_s**2)
    msd_p = 3 * 2 * 0.01 * 8 * w_s**2
    assert fw["S"].msd_half_run_a2 == pytest.approx(msd_s, rel=0.1)
    assert fw["P"].msd_half_run_a2 == pytest.approx(msd_p, rel=0.25)
    assert fw["S"].growth_ratio == pytest.approx(1.0, abs=0.1)  # vibrating, not wandering
    assert fw["P"].pinned and not fw["S"].pinned


def test_framework_msd_strides_long_runs(monkeypatch) -> None:
    import ionflow.analysis.framework_msd as mod

    monkeypatch.setattr(mod, "MAX_FRAMES", 500)
    pos, species, fixed = _trajectory(n_frames=1500)
    res = analyze_in_memory(
        pos, np.eye(3) * BOX, species, [FrameworkMSD()], temperature_k=None,
        frame_interval_fs=10.0, chunk_frames=333,
    )["framework-msd"]  # fmt: skip
    assert res.n_frames == 500 and res.frame_interval_fs == 30.0
    s = next(x for x in res.species if x.element == "S")
    assert 0.03 < s.msd_half_run_a2 < 0.07


def test_same_analysis_twice_in_one_pass_is_refused() -> None:
    pos, species, _ = _trajectory(n_frames=50)
    with pytest.raises(UserInputError, match="once per pass"):
        analyze_in_memory(
            pos, np.eye(3) * BOX, species, [FrameworkMSD(), FrameworkMSD()],
            temperature_k=600.0, frame_interval_fs=10.0,
        )  # fmt: skip


def _campaign_spec(tmp_path, extra: str = ""):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / "w.yaml"
    path.write_text(
        "campaign: c\nmobile_species: Li\nengine: {relax: none, md: toy}\n"
        "md: {temperatures_k: [600, 900], production_ps: 0.2, equilibration_ps: 0.04, "
        "time_step_fs: 2.0, frame_interval_fs: 10}\n"
        f"materials:\n  - {{name: Li3N, structure: {repo / 'examples' / 'Li3N.cif'}}}\n" + extra
    )
    return path


def test_spec_analyses_are_registered_names_and_default_keys_do_not_move(tmp_path) -> None:
    from ionflow.campaign import stage_keys
    from ionflow.spec import load_campaign

    spec0, (m0,) = load_campaign(_campaign_spec(tmp_path))
    assert spec0.analysis.analyses == ["diffusion", "rotation", "vdos", "density", "jumps"]
    spec1, (m1,) = load_campaign(
        _campaign_spec(tmp_path, "analysis: {analyses: [jumps, density, vdos, rotation]}\n")
    )
    assert stage_keys(spec0, m0) == stage_keys(spec1, m1)  # the explicit default is the default
    spec2, (m2,) = load_campaign(
        _campaign_spec(tmp_path, "analysis: {analyses: [Framework-MSD]}\n")
    )
    assert spec2.analysis.analyses == ["diffusion", "framework-msd"]
    k0, k2 = stage_keys(spec0, m0), stage_keys(spec2, m2)
    changed = {k[0] for k in k0 if k0[k] != k2[k]}
    assert changed == {"analysis", "arrhenius", "summary"}  # MD is reused


def test_per_material_analyses_merge_over_the_campaign(tmp_path) -> None:
    """``materials[i].analysis`` overrides the campaign's key by key; only that material's
    analysis keys move."""
    from ionflow.campaign import stage_keys
    from ionflow.spec import load_campaign

    path = _campaign_spec(tmp_path, "analysis: {drift_reference: framework}\n")
    text = path.read_text().replace(
        "Li3N.cif'}}", "Li3N.cif'}, analysis: {analyses: [diffusion, vdos]}}"
    )
    text = text.replace("Li3N.cif}", "Li3N.cif, analysis: {analyses: [diffusion, vdos]}}")
    path.write_text(text)
    spec, (mat,) = load_campaign(path)
    assert mat.analysis is not None
    assert mat.analysis.analyses == ["diffusion", "vdos"]
    assert mat.analysis.drift_reference == "framework"  # the campaign's, kept
    spec0, (m0,) = load_campaign(
        _campaign_spec(tmp_path, "analysis: {drift_reference: framework}\n")
    )
    assert m0.analysis is None
    k0, k1 = stage_keys(spec0, m0), stage_keys(spec, mat)
    assert {k[0] for k in k0 if k0[k] != k1[k]} == {"analysis", "arrhenius", "summary"}


def test_spec_unknown_analysis_is_a_one_line_error(tmp_path, capsys) -> None:
    from ionflow.cli import main

    path = _campaign_spec(tmp_path, "analysis: {analyses: [framework-mds]}\n")
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown analysis 'framework-mds'" in err
    assert "did you mean 'framework-msd'" in err
