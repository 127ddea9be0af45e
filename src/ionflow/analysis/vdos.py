"""Vibrational density of states (VDOS) per species from the velocity autocorrelation.

Velocities
----------
* **stored** (``.npz`` key ``velocities``, extxyz/ASE momenta — ``ctx.has_velocities``):
  used as they are, minus the drift reference's (mass-weighted) velocity, the same
  reference the displacements of every other analysis are corrected by;
* otherwise **finite differences** of the drift-corrected unwrapped positions, taken at
  the mid-points between frames, ``v(t + Δt/2) = (x(t + Δt) − x(t)) / Δt`` (the central
  difference of the half step, second order). Its power spectrum is the true one times
  ``sinc²(πνΔt)`` (0.81 at half the Nyquist frequency, 0.41 at Nyquist); the two-frame
  central difference ``(x(t + Δt) − x(t − Δt)) / 2Δt`` would damp by ``sinc²(2πνΔt)``,
  to zero at Nyquist, so the mid-point difference is used.

Either way the frame interval Δt limits the spectrum to the Nyquist frequency 1/(2Δt);
vibrations above it are folded (aliased) into the band. The result warns about both.

Estimator (memory bounded)
--------------------------
The all-origin velocity autocorrelation up to a maximum lag ``L`` (``max_lag_ps``;
default 5 ps, at most 4096 frames and a quarter of the run) is accumulated chunk by
chunk: velocities are buffered in blocks of ``2L`` frames (float32) and, for the ``L``
time origins of each block, ``Σ_n v_n·v_{n+τ}`` (``τ < L``) comes from one zero-padded
FFT correlation per atom and axis; every pair (origin, lag) of the run is counted once
and the sum is divided by its exact count ``N − τ``. Memory: ``2L × atoms × 3`` float32
plus ``atoms × L`` float64 sums, whatever the run length. The VACF up to a maximum lag
is kept (rather than Welch-averaged periodograms) because the Green–Kubo integral and
its plateau need the correlation function itself, and a Welch estimate with a taper is
that same VACF multiplied by a lag window — so one accumulator serves both.

Spectrum: the species-mean VACF ``C(τ)`` times a Parzen lag window (its spectral window
is non-negative, so the VDOS is too, and its side lobes fall as ν⁻⁴), Fourier-transformed
on a grid of step ``1/(2LΔt)`` from 0 to Nyquist. ``resolution_thz`` is the window's
equivalent bandwidth ``1/(Δt·Σw²) ≈ 1.85/(LΔt)`` (≈ 3.7 grid steps). Normalisation:
``g(ν) = 6·Ĉ(ν)/C(0)``, so ``∫₀^Nyquist g dν = 3`` per atom exactly (three degrees of
freedom; for finite-difference velocities the band's resolved kinetic energy is what is
normalised — ``kinetic_temperature_k`` says how much of equipartition that is).

Mobile species
--------------
* ``vdos_zero``: g(0), per THz. By Green–Kubo g(0) = 12·m·D/(k_B·T) when the velocities
  carry the full equipartition ⟨v²⟩ (stored velocities); finite-difference ones at
  coarse frames overstate it by T/T_kin.
* ``low_frequency_exponent``: least-squares slope of ln g vs ln ν on
  ``[resolution, cutoff]`` (cutoff ``low_frequency_cutoff_thz``, default 2 THz; the
  bins below one resolution width are smeared by the lag window). Debye solid n = 2;
  liquid-like n → 0–1 (seed 001). Its error is the OLS error × √(bins per resolution
  width) (neighbouring bins are correlated by the window) — an estimate.
* ``diffusivity_from_vacf_cm2_s``: Green–Kubo D = ⅓∫₀^∞ C(t) dt from the running
  trapezoid integral of the VACF (not from g(0)), averaged over its plateau, the lags
  ``[L/2, L)``. Error: the standard error over ions of each ion's own plateau value
  (ions taken as independent), combined with half the spread (max − min) of the
  ion-mean running integral over the plateau (non-convergence). For finite-difference
  velocities the sum telescopes to the MSD's slope near lag L, so it tracks the MSD D.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, Field

from ionflow.analysis.stream import FrameChunk, StreamedAnalysis, TrajectoryContext, register
from ionflow.errors import InsufficientDataError, UserInputError

#: Default maximum VACF lag (window), ps.
DEFAULT_MAX_LAG_PS = 5.0
#: Largest and smallest maximum lag, frames (memory: 2 × this × atoms × 12 bytes).
MAX_LAG_FRAMES = 4096
MIN_LAG_FRAMES = 8
#: Default upper end of the low-frequency power-law fit, THz.
DEFAULT_LOW_FREQUENCY_CUTOFF_THZ = 2.0
#: Peaks reported per species (strongest first) and their minimum prominence (of max g).
MAX_PEAKS = 5
PEAK_PROMINENCE = 0.05
#: Stored velocities whose Nyquist frequency is below this are warned about (THz):
#: P–S / Li–S stretches of thiophosphates reach ~15–17 THz.
ALIASING_WARN_THZ = 20.0
#: Atoms whose FFT correlations are computed at once (bounds the temporaries).
_ATOM_BATCH = 64
#: Å²/fs → cm²/s
A2_PER_FS_TO_CM2_PER_S = 0.1


def parzen_window(n_lags: int) -> np.ndarray:
    """Parzen lag window w(τ), τ = 0…n_lags−1, reaching 0 at τ = n_lags."""
    u = np.arange(n_lags) / n_lags
    return np.where(u <= 0.5, 1 - 6 * u**2 + 6 * u**3, 2 * (1 - u) ** 3)


class VACFAccumulator:
    """All-origin ``Σ_n v_n·v_{n+τ}`` (summed over x, y, z) per atom for τ < ``max_lag``.

    Feed velocity frames in order with :meth:`add`; :meth:`finish` flushes the buffer;
    :attr:`sums` ``(atoms, max_lag)`` and :meth:`counts` (pairs per lag) give the VACF.
    """

    def __init__(self, n_atoms: int, max_lag: int) -> None:
        self.n_atoms = int(n_atoms)
        self.max_lag = int(max_lag)
        self.sums = np.zeros((self.n_atoms, self.max_lag))
        self._buf = np.empty((2 * self.max_lag, self.n_atoms, 3), np.float32)
        self._n_buf = 0
        self.n_frames = 0

    def add(self, v: np.ndarray) -> None:
        """Append velocity frames ``(k, atoms, 3)``."""
        L2 = 2 * self.max_lag
        i = 0
        while i < len(v):
            take = min(len(v) - i, L2 - self._n_buf)
            self._buf[self._n_buf : self._n_buf + take] = v[i : i + take]
            self._n_buf += take
            i += take
            if self._n_buf == L2:
                self._block(self._n_buf, self.max_lag)
        self.n_frames += len(v)

    def finish(self) -> None:
        """Process the frames still buffered (call once, after the last :meth:`add`)."""
        while self._n_buf:
            self._block(self._n_buf, min(self.max_lag, self._n_buf))

    def counts(self) -> np.ndarray:
        """Pairs (origin, origin + τ) per lag τ: ``N − τ`` (at least 1)."""
        return np.maximum(self.n_frames - np.arange(self.max_lag), 1).astype(float)

    def _block(self, n_buf: int, n_origins: int) -> None:
        """Correlate origins ``buf[:n_origins]`` with ``buf[:n_buf]``; drop the origins."""
        from scipy import fft

        L, m = self.max_lag, 2 * self.max_lag  # no wrap-around: n_origins + τ < 2L for τ < L
        for a in range(0, self.n_atoms, _ATOM_BATCH):
            b = min(self.n_atoms, a + _ATOM_BATCH)
            block = self._buf[:n_buf, a:b].astype(np.float64)
            full = fft.rfft(block, n=m, axis=0)
            head = fft.rfft(block[:n_origins], n=m, axis=0)
            corr = fft.irfft(np.conj(head) * full, n=m, axis=0)[:L]
            self.sums[a:b] += corr.sum(axis=2).T
        rest = n_buf - n_origins
        self._buf[:rest] = self._buf[n_origins:n_buf]
        self._n_buf = rest


class SpeciesVDOS(BaseModel):
    """Per-species numbers besides the curves."""

    element: str = Field(description="Element")
    n_atoms: int = Field(description="Atoms of this element analysed")
    kinetic_temperature_k: float = Field(
        description="m⟨v²⟩/(3k_B) of the velocities used, K (finite differences at coarse "
        "frames resolve only part of the kinetic energy)"
    )
    resolved_kinetic_fraction: float | None = Field(
        None, description="kinetic_temperature_k / the run's temperature (None: T unknown)"
    )


class VDOSResult(BaseModel):
    """Vibrational density of states of one run (module docstring)."""

    schema_version: str = Field("1", description="Schema version of this result kind")
    source: str = Field(description="Trajectory analysed")
    temperature_k: float | None = Field(description="Run temperature, K (None: unknown)")
    frame_interval_fs: float = Field(description="Time between the frames used, fs")
    n_frames: int = Field(description="Velocity frames used")
    velocity_source: str = Field(
        description="'stored' (the file's velocities) or 'finite-difference' (mid-point "
        "differences of unwrapped positions)"
    )
    drift_reference: str = Field(description="Atoms whose drift (velocity) was removed")
    nyquist_thz: float = Field(description="Highest resolved frequency 1/(2Δt), THz")
    max_lag_ps: float = Field(description="VACF window: maximum lag, ps")
    max_lag_frames: int = Field(description="VACF window: maximum lag, frames")
    lag_window: str = Field(description="Lag window applied before the Fourier transform")
    frequency_step_thz: float = Field(description="Grid step of frequency_thz, THz")
    resolution_thz: float = Field(
        description="Equivalent bandwidth of the lag window 1/(Δt·Σw²), THz"
    )
    frequency_thz: list[float] = Field(description="Frequencies ν, THz (0 … Nyquist)")
    vdos: dict[str, list[float]] = Field(
        description="g(ν) per species, per THz, ∫₀^Nyquist g dν = 3 per atom"
    )
    peak_frequencies_thz: dict[str, list[float]] = Field(
        description="Peaks of g per species, THz, strongest first (prominence ≥ 5 % of max)"
    )
    vacf_time_ps: list[float] = Field(description="Lags of vacf, ps (thinned)")
    vacf: dict[str, list[float]] = Field(
        description="Normalised VACF C(t)/C(0) per species (drift removed)"
    )
    species: list[SpeciesVDOS] = Field(description="Per-species numbers")
    mobile_species: str = Field(description="The mobile species")
    low_frequency_cutoff_thz: float = Field(description="Upper end of the power-law fit, THz")
    low_frequency_fit_range_thz: tuple[float, float] | None = Field(
        None, description="Frequencies the power-law fit used, THz"
    )
    vdos_zero: float | None = Field(None, description="g(0) of the mobile species, per THz")
    low_frequency_exponent: float | None = Field(
        None, description="n of g ∝ ν^n below the cutoff (Debye solid 2, liquid-like 0–1)"
    )
    low_frequency_exponent_err: float | None = Field(
        None, description="Approximate 1σ error of the exponent"
    )
    low_frequency_exponent_reason: str | None = Field(None, description="Why the exponent is None")
    diffusivity_from_vacf_cm2_s: float | None = Field(
        None, description="Green–Kubo D = ⅓∫VACF dt (plateau mean), cm²/s"
    )
    diffusivity_from_vacf_err_cm2_s: float | None = Field(
        None, description="1σ: spread over ions ⊕ half the plateau's spread, cm²/s"
    )
    diffusivity_method: str = Field(description="How D was obtained")
    gk_plateau_window_ps: tuple[float, float] = Field(
        description="Lags averaged for the Green–Kubo plateau, ps"
    )
    gk_time_ps: list[float] = Field(description="Lags of gk_running_integral_cm2_s, ps (thinned)")
    gk_running_integral_cm2_s: list[float] = Field(
        description="⅓∫₀^t VACF dt′ of the mobile species, cm²/s"
    )
    warnings: list[str] = Field(default_factory=list, description="What limits the result")


def _thin(n: int, at_most: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, at_most)).round().astype(int))


def _peaks(nu: np.ndarray, g: np.ndarray) -> list[float]:
    """Peak frequencies (parabolic refinement), strongest first."""
    from scipy.signal import find_peaks

    if not g.size or not np.max(g) > 0:
        return []
    idx, _ = find_peaks(g, prominence=PEAK_PROMINENCE * float(np.max(g)))
    idx = idx[np.argsort(g[idx])[::-1]][:MAX_PEAKS]
    step = nu[1] - nu[0]
    out = []
    for i in idx:
        a, b, c = g[i - 1], g[i], g[i + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den < 0 else 0.0
        out.append(float(nu[i] + shift * step))
    return out


@register
class VDOS(StreamedAnalysis):
    """Vibrational density of states and Green–Kubo D (module docstring)."""

    name = "vdos"
    result_model = VDOSResult
    schema_version = "1"
    needs_velocities = True

    def __init__(
        self,
        *,
        max_lag_ps: float | None = None,
        low_frequency_cutoff_thz: float = DEFAULT_LOW_FREQUENCY_CUTOFF_THZ,
    ) -> None:
        if max_lag_ps is not None and not (math.isfinite(max_lag_ps) and max_lag_ps > 0):
            raise UserInputError(f"max lag must be > 0 ps, got {max_lag_ps}")
        if not (math.isfinite(low_frequency_cutoff_thz) and low_frequency_cutoff_thz > 0):
            raise UserInputError(
                f"low-frequency cutoff must be > 0 THz, got {low_frequency_cutoff_thz}"
            )
        self.max_lag_ps = max_lag_ps
        self.low_frequency_cutoff_thz = float(low_frequency_cutoff_thz)

    @classmethod
    def describe(cls, result: VDOSResult) -> str | None:
        r = result
        head = f"VDOS ({r.velocity_source} velocities, Nyquist {r.nyquist_thz:.3g} THz)"
        parts = []
        if r.vdos_zero is not None:
            parts.append(f"{r.mobile_species} g(0) = {r.vdos_zero:.3g}/THz")
        if r.low_frequency_exponent is not None:
            parts.append(
                f"n = {r.low_frequency_exponent:.2f} ± {r.low_frequency_exponent_err:.2f} "
                f"below {r.low_frequency_cutoff_thz:g} THz"
            )
        if r.diffusivity_from_vacf_cm2_s is not None:
            parts.append(
                f"D_VACF = {r.diffusivity_from_vacf_cm2_s:.3g} ± "
                f"{r.diffusivity_from_vacf_err_cm2_s:.2g} cm²/s"
            )
        peaks = "; ".join(
            f"{el} {', '.join(f'{x:.3g}' for x in p[:2])}"
            for el, p in r.peak_frequencies_thz.items()
            if p
        )
        if peaks:
            parts.append(f"peaks (THz) {peaks}")
        return f"{head}: {', '.join(parts)}" if parts else head

    def prepare(self, ctx: TrajectoryContext, unwrapper) -> None:
        self.ctx = ctx
        self.stored = bool(ctx.has_velocities)
        dt = ctx.frame_interval_fs
        n_vel = ctx.n_frames if self.stored else ctx.n_frames - 1
        self.notes: list[str] = []
        want_ps = DEFAULT_MAX_LAG_PS if self.max_lag_ps is None else self.max_lag_ps
        lag = int(round(want_ps * 1000.0 / dt))
        cap = min(MAX_LAG_FRAMES, n_vel // 4 if self.max_lag_ps is None else n_vel // 2)
        if lag > cap:
            if self.max_lag_ps is not None:
                self.notes.append(
                    f"max lag {want_ps:g} ps cut to {cap} frames ({cap * dt / 1000:.3g} ps): "
                    f"at most {MAX_LAG_FRAMES} frames and half the run"
                )
            lag = cap
        if self.max_lag_ps is None:
            lag = max(lag, min(MIN_LAG_FRAMES, cap))
        if lag < MIN_LAG_FRAMES:
            raise InsufficientDataError(
                f"{ctx.source}: {n_vel} velocity frames allow a VACF window of {lag} frames; "
                f"the VDOS needs at least {MIN_LAG_FRAMES} (a longer run)"
            )
        self.lag = lag
        self.acc = VACFAccumulator(ctx.n_atoms, lag)
        self._prev_drift = np.zeros(3)

    def accumulate(self, chunk: FrameChunk) -> None:
        if self.stored:
            v = chunk.velocities - chunk.velocity_drift[:, None, :]
        else:  # mid-point differences of the drift-corrected unwrapped positions
            prev = np.concatenate([self._prev_drift[None], chunk.drift[:-1]])
            v = (chunk.steps - (chunk.drift - prev)[:, None, :]) / self.ctx.frame_interval_fs
            self._prev_drift = chunk.drift[-1]
            if chunk.start == 0:
                v = v[1:]  # the first frame has no predecessor
        self.acc.add(v)

    # -- conclusion

    def conclude(self) -> VDOSResult:
        from ase import units
        from ase.data import atomic_masses, atomic_numbers

        ctx, acc, L = self.ctx, self.acc, self.lag
        acc.finish()
        dt = ctx.frame_interval_fs
        warnings_ = list(self.notes)
        per_atom = acc.sums / acc.counts()[None]  # (atoms, L) ⟨v(0)·v(τ)⟩, (Å/fs)²
        nyquist = 1000.0 / (2 * dt)
        step = 1000.0 / (2 * L * dt)
        nu = np.arange(L + 1) * step
        w = parzen_window(L)
        resolution = 1000.0 / (dt * float(w[0] ** 2 + 2 * np.sum(w[1:] ** 2)))
        t_ps = np.arange(L) * dt / 1000.0
        thin = _thin(L, 400)
        species = list(dict.fromkeys(ctx.species))
        sp_arr = np.asarray(ctx.species)
        vdos, peaks, vacf, rows = {}, {}, {}, []
        fixed = None if ctx.fixed_atoms is None else np.asarray(ctx.fixed_atoms, bool)
        for el in species:
            idx = np.flatnonzero(sp_arr == el)
            if fixed is not None:
                idx = idx[~fixed[idx]]
            if not idx.size:
                warnings_.append(f"{el}: every atom is fixed; no VDOS")
                continue
            c = per_atom[idx].mean(axis=0)
            if not c[0] > 0:
                warnings_.append(f"{el}: the atoms do not move; no VDOS")
                continue
            x = np.zeros(2 * L)
            x[:L] = w * c
            x[L + 1 :] = (w * c)[1:][::-1]
            spec = np.fft.rfft(x).real * dt  # Ĉ(ν), (Å/fs)²·fs
            g = 6.0 * spec / c[0] * 1e-3  # per THz
            vdos[el] = g.tolist()
            peaks[el] = [p for p in _peaks(nu, g) if p >= resolution]
            vacf[el] = (c[thin] / c[0]).tolist()
            t_kin = float(atomic_masses[atomic_numbers[el]] * c[0] / units.fs**2 / (3 * units.kB))
            frac = t_kin / ctx.temperature_k if ctx.temperature_k else None
            rows.append(
                SpeciesVDOS(
                    element=el,
                    n_atoms=int(idx.size),
                    kinetic_temperature_k=t_kin,
                    resolved_kinetic_fraction=frac,
                )
            )
        self._velocity_warnings(warnings_, nyquist, rows)
        mob = ctx.mobile_species
        out = dict(
            source=ctx.source,
            temperature_k=ctx.temperature_k,
            frame_interval_fs=dt,
            n_frames=acc.n_frames,
            velocity_source="stored" if self.stored else "finite-difference",
            drift_reference=ctx.reference_label,
            nyquist_thz=nyquist,
            max_lag_ps=L * dt / 1000.0,
            max_lag_frames=L,
            lag_window="Parzen",
            frequency_step_thz=step,
            resolution_thz=resolution,
            frequency_thz=nu.tolist(),
            vdos=vdos,
            peak_frequencies_thz=peaks,
            vacf_time_ps=t_ps[thin].tolist(),
            vacf=vacf,
            species=rows,
            mobile_species=mob,
            low_frequency_cutoff_thz=self.low_frequency_cutoff_thz,
            diffusivity_method=(
                "Green–Kubo: ⅓ × running trapezoid integral of the ion-mean VACF, averaged "
                "over lags [L/2, L); not from g(0). It equals the MSD's slope near those lags: "
                "the long-time D only if the motion is diffusive by then (see the diffusion "
                "analysis' regime)"
            ),
            gk_plateau_window_ps=(float(t_ps[L // 2]), float(t_ps[-1])),
            gk_time_ps=[],
            gk_running_integral_cm2_s=[],
        )
        if mob in vdos:
            g = np.asarray(vdos[mob])
            out["vdos_zero"] = float(g[0])
            out.update(self._exponent(nu, g, resolution, nyquist, warnings_))
            out.update(self._green_kubo(per_atom, mob, dt, t_ps, warnings_))
        out["warnings"] = warnings_
        return VDOSResult(**out)

    def _velocity_warnings(
        self, warnings_: list[str], nyquist: float, rows: list[SpeciesVDOS]
    ) -> None:
        dt = self.ctx.frame_interval_fs
        if not self.stored:
            kinetic = ", ".join(
                f"{r.element} {100 * r.resolved_kinetic_fraction:.0f} %"
                for r in rows
                if r.resolved_kinetic_fraction is not None
            )
            warnings_.append(
                f"velocities from finite differences of positions {dt:g} fs apart: the "
                f"spectrum ends at the Nyquist frequency 1/(2Δt) = {nyquist:.3g} THz, "
                "vibrations above it are folded back into the band, and the difference "
                "damps g by sinc²(πνΔt) (to 41 % at Nyquist); g is normalised on the "
                "resolved band"
                + (
                    f" — kinetic energy resolved (of equipartition at T): {kinetic}; g(0) is "
                    "overstated by the inverse of that fraction, the VACF D is not"
                    if kinetic
                    else ""
                )
            )
        elif nyquist < ALIASING_WARN_THZ:
            warnings_.append(
                f"stored velocities {dt:g} fs apart: the spectrum ends at the Nyquist "
                f"frequency {nyquist:.3g} THz and vibrations above it (P–S, Li–S stretches "
                "reach ~15–17 THz) are folded back into the band"
            )
        if self.stored and self.ctx.temperature_k:
            off = [
                f"{r.element} {r.kinetic_temperature_k:.0f} K"
                for r in rows
                if r.resolved_kinetic_fraction is not None
                and abs(r.resolved_kinetic_fraction - 1) > 0.25
            ]
            if off:
                warnings_.append(
                    f"stored velocities are not at the run's {self.ctx.temperature_k:g} K "
                    f"(kinetic temperature: {', '.join(off)}); are they in Å/fs?"
                )

    def _exponent(
        self, nu: np.ndarray, g: np.ndarray, resolution: float, nyquist: float, warnings_: list
    ) -> dict:
        cutoff = self.low_frequency_cutoff_thz
        if cutoff > nyquist:
            warnings_.append(
                f"low-frequency cutoff {cutoff:g} THz is above the Nyquist frequency; fitting "
                f"up to {nyquist:.3g} THz"
            )
            cutoff = nyquist
        sel = (nu >= resolution) & (nu <= cutoff) & (g > 0)
        if np.count_nonzero(sel) < 4:
            return {
                "low_frequency_exponent_reason": (
                    f"fewer than 4 frequency bins between the resolution {resolution:.3g} THz "
                    f"and the cutoff {cutoff:.3g} THz (a longer VACF window or finer frames)"
                )
            }
        lx, ly = np.log(nu[sel]), np.log(g[sel])
        (slope, icpt), cov = np.polyfit(lx, ly, 1, cov=True)
        per_res = max(1.0, resolution / (nu[1] - nu[0]))
        err = float(np.sqrt(max(cov[0, 0], 0.0) * per_res))
        return {
            "low_frequency_exponent": float(slope),
            "low_frequency_exponent_err": err,
            "low_frequency_fit_range_thz": (float(nu[sel][0]), float(nu[sel][-1])),
        }

    def _green_kubo(
        self, per_atom: np.ndarray, mob: str, dt: float, t_ps: np.ndarray, warnings_: list
    ) -> dict:
        idx = np.flatnonzero(np.asarray(self.ctx.species) == mob)
        if self.ctx.fixed_atoms is not None:
            idx = idx[~np.asarray(self.ctx.fixed_atoms, bool)[idx]]
        c = per_atom[idx]  # (ions, L)
        run = np.zeros_like(c)  # trapezoid ∫₀^τ, Å²/fs
        run[:, 1:] = np.cumsum(0.5 * (c[:, 1:] + c[:, :-1]), axis=1) * dt
        run *= A2_PER_FS_TO_CM2_PER_S / 3.0
        lo = self.lag // 2
        mean_run = run.mean(axis=0)
        d = float(mean_run[lo:].mean())
        per_ion = run[:, lo:].mean(axis=1)
        sem = float(per_ion.std(ddof=1) / np.sqrt(len(idx))) if len(idx) > 1 else 0.0
        spread = 0.5 * float(mean_run[lo:].max() - mean_run[lo:].min())
        err = math.hypot(sem, spread)
        if not d > 2 * err:
            warnings_.append(
                f"Green–Kubo D = {d:.3g} ± {err:.2g} cm²/s is not resolved from zero "
                "(no long-range diffusion within the VACF window, or too short a run)"
            )
        elif spread > 0.2 * abs(d):
            warnings_.append(
                f"the Green–Kubo integral drifts across its plateau ({t_ps[lo]:.3g}–"
                f"{t_ps[-1]:.3g} ps) by ±{spread / d:.0%}: not converged; a longer window "
                "(--max-lag-ps) may change D"
            )
        thin = _thin(len(t_ps), 200)
        return {
            "diffusivity_from_vacf_cm2_s": d,
            "diffusivity_from_vacf_err_cm2_s": err,
            "gk_time_ps": t_ps[thin].tolist(),
            "gk_running_integral_cm2_s": mean_run[thin].tolist(),
        }


def plot_vdos(result: VDOSResult, path=None):
    """VDOS per species vs THz (left) and the Green–Kubo running integral (right)."""
    from ionflow.analysis.plots import _finish, _pyplot

    plt = _pyplot()
    fig, (ax, ax_gk) = plt.subplots(1, 2, figsize=(10.5, 4.2), dpi=120)
    nu = np.asarray(result.frequency_thz)
    for el, g in result.vdos.items():
        ax.plot(nu, g, lw=1.5 if el == result.mobile_species else 1.0, label=el)
    ax.set_xlabel("frequency ν (THz)")
    ax.set_ylabel("g(ν) (1/THz, ∫g dν = 3)")
    ax.set_xlim(0, nu[-1])
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"VDOS, {result.velocity_source} velocities (Nyquist {result.nyquist_thz:.3g} THz, "
        f"Δν {result.resolution_thz:.2g} THz)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    if result.gk_time_ps:
        ax_gk.plot(result.gk_time_ps, result.gk_running_integral_cm2_s, color="k")
        ax_gk.axvspan(*result.gk_plateau_window_ps, color="0.85", zorder=0, label="plateau")
        if result.diffusivity_from_vacf_cm2_s is not None:
            d, e = result.diffusivity_from_vacf_cm2_s, result.diffusivity_from_vacf_err_cm2_s
            ax_gk.axhline(d, color="tab:red", lw=1, label=f"D = {d:.3g} ± {e:.2g} cm²/s")
        ax_gk.legend(fontsize=8)
    ax_gk.set_xlabel("t (ps)")
    ax_gk.set_ylabel(f"⅓∫₀ᵗ VACF of {result.mobile_species} (cm²/s)")
    ax_gk.set_title("Green–Kubo running integral", fontsize=9)
    _finish(plt, fig, path)
    return fig
