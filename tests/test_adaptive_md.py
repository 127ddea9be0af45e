"""Extending an ML MD run from its checkpoint (ionflow.md.run_md production_steps_total):
the chunked trajectory equals the uninterrupted one, frame by frame."""

from __future__ import annotations

import numpy as np
import pytest

from ionflow.md import PRODUCTION_NAME, run_md
from ionflow.potentials import get_calculator
from tests.test_md import Crash, licl, read_frames, settings


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin"])
def test_extensions_continue_the_trajectory(tmp_path, thermostat):
    first = settings(production_steps=100, thermostat=thermostat)
    straight = run_md(
        licl(),
        get_calculator("toy"),
        settings(production_steps=300, thermostat=thermostat),
        tmp_path / "straight",
    )
    work = tmp_path / "chunked"
    r1 = run_md(licl(), get_calculator("toy"), first, work)
    assert r1.n_production_frames == 11
    r2 = run_md(licl(), get_calculator("toy"), first, work, production_steps_total=200)
    assert r2.completed and r2.resumed_from_step == 140 and r2.n_production_frames == 21

    def crash_at_step_290(step, total):  # a worker killed in the middle of the extension
        if step == 290:
            raise Crash

    with pytest.raises(Crash):
        run_md(
            licl(),
            get_calculator("toy"),
            first,
            work,
            production_steps_total=300,
            progress=crash_at_step_290,
        )
    r3 = run_md(licl(), get_calculator("toy"), first, work, production_steps_total=300)
    assert r3.completed and r3.resumed_from_step == 280
    # frame count = sum of the chunks (10 + 10 + 10 new frames after frame 0), no duplicate
    assert r3.n_production_frames == straight.n_production_frames == 31
    a, b = read_frames(straight.production_trajectory), read_frames(work / PRODUCTION_NAME)
    assert len(a) == len(b) == 31
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.positions, fb.positions)
        assert np.array_equal(fa.get_momenta(), fb.get_momenta())
    assert r3.mean_temperature_k == pytest.approx(straight.mean_temperature_k, rel=1e-12)
    # asking for less than the directory holds returns at once with all of it
    again = run_md(licl(), get_calculator("toy"), first, work, production_steps_total=200)
    assert again.n_production_frames == 31 and again.steps_done == 340
    again = run_md(licl(), get_calculator("toy"), first, work)
    assert again.n_production_frames == 31
