"""Streaming unwrapping and all-time-origin mean squared displacements.

Two stages, both with bounded memory:

1. :class:`DisplacementAccumulator` keeps the mobile ions' unwrapped, drift-corrected
   displacements, as float32 (a 500,000-frame × 60-ion run is 360 MB), from chunks
   unwrapped by :class:`ionflow.analysis.stream.Unwrapper` (minimum image of the
   *fractional* step between consecutive frames, so per-frame lattices — NPT — work;
   drift of a chosen reference group, by default the mass-weighted centre of mass of
   every non-mobile atom).
2. :func:`msd_fft` computes the MSD over *every* time origin for every lag with the
   FFT (Wiener–Khinchin) algorithm, O(T log T) per ion, a few ions at a time.

Nothing here imports jobflow, FireWorks or a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft

#: Memory budget for one FFT block (bytes). Blocks of ions are sized to stay below it.
FFT_BLOCK_BYTES = 192_000_000


def msd_fft(x: np.ndarray) -> np.ndarray:
    """MSD over all time origins for every lag, column by column.

    Parameters
    ----------
    x
        Array (n_frames, n_columns) of unwrapped coordinates (one column per ion and
        axis), in Å.

    Returns
    -------
    np.ndarray
        (n_frames, n_columns): ``msd[m, c] = mean_t (x[t+m, c] - x[t, c])**2`` over the
        ``n_frames - m`` origins, in Å².
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return msd_fft(x[:, None])[:, 0]
    n = x.shape[0]
    # a constant offset does not change the MSD; removing it limits cancellation
    x = x - x.mean(axis=0, keepdims=True)
    n_fft = next_fast_len(2 * n, real=True)
    spectrum = rfft(x, n=n_fft, axis=0)
    spectrum *= np.conj(spectrum)
    counts = (n - np.arange(n))[:, None].astype(np.float64)
    s2 = irfft(spectrum, n=n_fft, axis=0)[:n] / counts
    del spectrum
    sq = x * x
    prefix = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(sq, axis=0)], axis=0)
    total = prefix[-1]
    m = np.arange(n)
    # sum_{t=0}^{n-m-1} x_t^2 + sum_{t=m}^{n-1} x_t^2
    s1 = (prefix[n - m] + (total[None, :] - prefix[m])) / counts
    out = s1 - 2.0 * s2
    np.maximum(out, 0.0, out=out)
    out[0] = 0.0
    return out


@dataclass
class Displacements:
    """Drift-corrected unwrapped displacements of the mobile ions.

    Attributes
    ----------
    mobile
        (n_frames, n_mobile, 3) float32 displacements from frame 0, Å, reference
        drift removed.
    drift
        (n_frames, 3) displacement of the drift reference, Å (zeros when none).
    frame_interval_fs
        Time between frames, fs.
    mean_volume_a3
        Cell volume averaged over frames, Å³.
    first_volume_a3
        Volume of the first frame, Å³.
    max_reference_rms_a
        Largest RMS displacement (after drift removal) of the reference atoms,
        sampled at the end of every chunk of frames, Å — a melting /
        framework-breakdown diagnostic.
    """

    mobile: np.ndarray
    drift: np.ndarray
    frame_interval_fs: float
    mean_volume_a3: float
    first_volume_a3: float
    max_reference_rms_a: float
    mobile_indices: np.ndarray
    reference_indices: np.ndarray
    extras: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.mobile.shape[0])

    @property
    def n_mobile(self) -> int:
        return int(self.mobile.shape[1])


class DisplacementAccumulator:
    """Accumulate unwrapped, drift-corrected displacements of the mobile ions chunk by chunk.

    Parameters
    ----------
    n_atoms
        Atoms per frame.
    mobile_indices
        Atoms whose displacements are kept.
    reference_indices
        Atoms defining the drift to remove (empty → no drift removal).
    reference_weights
        Weights of the reference atoms (masses for a centre of mass, ones for a
        plain average); normalised internally.
    n_frames_hint
        Expected number of frames (pre-allocates; grows if exceeded).
    unwrapper
        A shared :class:`~ionflow.analysis.stream.Unwrapper` (streamed analyses: the
        driver unwraps once and calls :meth:`add`); None → an own one (:meth:`add_chunk`).
    """

    def __init__(
        self,
        n_atoms: int,
        mobile_indices: Sequence[int],
        reference_indices: Sequence[int],
        reference_weights: Sequence[float] | None = None,
        n_frames_hint: int = 1024,
        *,
        unwrapper=None,
    ) -> None:
        from ionflow.analysis.stream import Unwrapper

        self.mobile_indices = np.asarray(mobile_indices, dtype=int)
        self.reference_indices = np.asarray(reference_indices, dtype=int)
        self._unwrap = unwrapper or Unwrapper(n_atoms, reference_indices, reference_weights)
        self._buf = np.zeros((max(int(n_frames_hint), 1), len(self.mobile_indices), 3), np.float32)
        self._drift = np.zeros((self._buf.shape[0], 3), np.float64)
        self._n = 0

    def _grow(self, need: int) -> None:
        if need <= self._buf.shape[0]:
            return
        new = max(need, int(self._buf.shape[0] * 1.5) + 1)
        buf = np.zeros((new, *self._buf.shape[1:]), np.float32)
        buf[: self._n] = self._buf[: self._n]
        drift = np.zeros((new, 3))
        drift[: self._n] = self._drift[: self._n]
        self._buf, self._drift = buf, drift

    def add_chunk(self, positions: np.ndarray, lattices: np.ndarray) -> None:
        """Add frames: positions (k, n_atoms, 3) Cartesian Å; lattices (k, 3, 3) or (3, 3)."""
        if np.asarray(positions).shape[0] == 0:
            return
        self.add(self._unwrap.chunk(positions, lattices))

    def add(self, chunk) -> None:
        """Add an unwrapped :class:`~ionflow.analysis.stream.FrameChunk`."""
        k = chunk.n_frames
        self._grow(self._n + k)
        self._buf[self._n : self._n + k] = chunk.displacements(self.mobile_indices)
        self._drift[self._n : self._n + k] = chunk.drift
        self._n += k

    def result(self, frame_interval_fs: float) -> Displacements:
        """The accumulated displacements (views, no copy)."""
        n = self._n
        return Displacements(
            mobile=self._buf[:n],
            drift=self._drift[:n],
            frame_interval_fs=float(frame_interval_fs),
            mean_volume_a3=self._unwrap.mean_volume_a3,
            first_volume_a3=self._unwrap.first_volume,
            max_reference_rms_a=self._unwrap.max_reference_rms_a,
            mobile_indices=self.mobile_indices,
            reference_indices=self.reference_indices,
        )


@dataclass
class MSDResult:
    """MSD statistics of one set of mobile ions.

    Attributes
    ----------
    lag_frames
        (n_lags,) every lag 0 … n_frames-1.
    msd_axes_a2
        (n_lags, 3) ion-averaged MSD per Cartesian axis, Å².
    collective_axes_a2
        (n_lags, 3) MSD of the *summed* displacement of all mobile ions divided by
        their number (the "mean square charge displacement" per axis), Å².
    grid_lags
        (n_grid,) lags at which per-ion MSDs were kept.
    per_ion_grid_a2
        (n_grid, n_ions, 3) per-ion, per-axis MSD at ``grid_lags``, Å².
    """

    lag_frames: np.ndarray
    msd_axes_a2: np.ndarray
    collective_axes_a2: np.ndarray
    grid_lags: np.ndarray
    per_ion_grid_a2: np.ndarray

    @property
    def msd_a2(self) -> np.ndarray:
        return self.msd_axes_a2.sum(axis=1)

    @property
    def collective_a2(self) -> np.ndarray:
        return self.collective_axes_a2.sum(axis=1)


def compute_msd(
    disp: np.ndarray, grid_lags: np.ndarray, *, progress=None, block_bytes: int = FFT_BLOCK_BYTES
) -> MSDResult:
    """Ion-averaged, per-ion (on a lag grid) and collective MSD by FFT.

    Parameters
    ----------
    disp
        (n_frames, n_ions, 3) unwrapped displacements, Å (float32 is fine).
    grid_lags
        Lags (frames) at which to keep per-ion values for the error analysis.
    progress
        Optional callable(n_ions_done) for progress display.
    """
    n, n_ions, _ = disp.shape
    grid_lags = np.asarray(grid_lags, dtype=int)
    n_fft = next_fast_len(2 * n, real=True)
    per_col_bytes = 8 * (2 * n_fft + 6 * n)
    block = max(1, min(n_ions, block_bytes // (3 * per_col_bytes)))
    msd_sum = np.zeros((n, 3))
    per_ion = np.zeros((len(grid_lags), n_ions, 3), np.float64)
    total = np.zeros((n, 3))
    for start in range(0, n_ions, block):
        stop = min(n_ions, start + block)
        chunk = np.asarray(disp[:, start:stop, :], dtype=np.float64)
        total += chunk.sum(axis=1)
        m = msd_fft(chunk.reshape(n, -1)).reshape(n, stop - start, 3)
        msd_sum += m.sum(axis=1)
        per_ion[:, start:stop, :] = m[grid_lags]
        del m, chunk
        if progress is not None:
            progress(stop - start)
    collective = msd_fft(total) / n_ions
    return MSDResult(
        lag_frames=np.arange(n),
        msd_axes_a2=msd_sum / n_ions,
        collective_axes_a2=collective,
        grid_lags=grid_lags,
        per_ion_grid_a2=per_ion,
    )


def brownian_slope_variance(
    lags: np.ndarray,
    weights: np.ndarray,
    n_frames: int,
    step_variance: float,
    *,
    max_frames: int = 2000,
) -> float:
    """Variance of a linear functional of a 1-D time-averaged MSD for Brownian motion.

    For a Brownian coordinate with increment variance ``step_variance`` per frame
    (= 2·D·Δt), the MSD estimated over all time origins at lags k and l has
    covariance ``Cov(M_k, M_l) = 2/((n-k)(n-l)) Σ_i Σ_j (step_variance·overlap)²`` where
    ``overlap`` is the number of shared frames of the intervals [i, i+k] and
    [j, j+l]. This returns ``wᵀ C w`` for weights ``w`` on ``lags`` (e.g. the OLS
    slope weights) — the exact sampling variance of the fitted slope that overlapping
    time origins imply, the covariance a plain OLS error ignores.

    Long trajectories are coarse-grained to at most ``max_frames`` frames (the
    covariance is scale-free, so this changes the result by O(1/max_frames)).
    """
    lags = np.asarray(lags, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    s = max(1, int(np.ceil(n_frames / max_frames)))
    n = n_frames // s
    k_all = np.maximum(1, np.round(lags / s).astype(int))
    var_step = step_variance * s
    total = 0.0
    for a, (k, wk) in enumerate(zip(k_all, weights, strict=True)):
        for b in range(a, len(k_all)):
            lag_l, wl = k_all[b], weights[b]
            if k >= n or lag_l >= n:
                continue
            d = np.arange(-lag_l + 1, k)  # offsets j - i with non-zero overlap
            ov = np.minimum(k, d + lag_l) - np.maximum(0, d)
            mult = np.minimum(n - k - 1, n - lag_l - 1 - d) - np.maximum(0, -d) + 1
            ok = (ov > 0) & (mult > 0)
            s_sum = float(np.sum(mult[ok] * (ov[ok].astype(np.float64) ** 2)))
            cov = 2.0 * var_step**2 * s_sum / ((n - k) * (n - lag_l))
            total += (1.0 if a == b else 2.0) * wk * wl * cov
    return total
