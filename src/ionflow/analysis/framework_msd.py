"""MSD of every non-mobile species: is the framework intact, are pinned atoms still?

A framework that keeps its sites has an MSD that plateaus at the vibrational amplitude
(a few 0.01–0.1 Å² for S, P, halides at 300–1000 K); a melting or re-arranging framework
keeps growing. The diffusion analysis assumes the former (it removes the framework's
drift and treats it as the reference); this analysis shows it, species by species, in the
same streamed pass.

Per species: the all-origin MSD curve (thinned), its value at half the run
(``msd_half_run_a2``), and the ratio of that to its value at a tenth of the run
(``growth_ratio``; ≈ 1 for a vibrating framework, ≫ 1 when atoms wander). Memory is
bounded by striding long runs to at most :data:`MAX_FRAMES` frames.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from ionflow.analysis.msd import msd_fft
from ionflow.analysis.stream import FrameChunk, StreamedAnalysis, TrajectoryContext, register

#: Frames kept (longer runs are strided: the MSD needs every origin, not every frame).
MAX_FRAMES = 20_000


class SpeciesMSD(BaseModel):
    """MSD of one framework species."""

    element: str = Field(description="Element")
    n_atoms: int = Field(description="Atoms of this element")
    pinned: bool = Field(description="Every atom of this element is fixed (pinned control)")
    time_ps: list[float] = Field(description="Lag times, ps (thinned)")
    msd_a2: list[float] = Field(description="Atom-averaged MSD, drift removed, Å²")
    msd_half_run_a2: float = Field(description="MSD at half the run, Å²")
    growth_ratio: float | None = Field(
        description="MSD(T/2) / MSD(T/10): ≈ 1 vibrating, ≫ 1 wandering"
    )


class FrameworkMSDResult(BaseModel):
    """Framework MSD per species of one run."""

    schema_version: str = Field("1", description="Schema version of this result kind")
    source: str = Field(description="Trajectory analysed")
    frame_interval_fs: float = Field(description="Time between the frames used, fs")
    n_frames: int = Field(description="Frames used")
    drift_reference: str = Field(description="Atoms whose drift was removed")
    species: list[SpeciesMSD] = Field(description="One entry per non-mobile element")


@register
class FrameworkMSD(StreamedAnalysis):
    """Per-species MSD of the non-mobile atoms (module docstring)."""

    name = "framework-msd"
    result_model = FrameworkMSDResult
    schema_version = "1"

    @classmethod
    def describe(cls, result: FrameworkMSDResult) -> str | None:
        parts = [
            f"{x.element}{' (pinned)' if x.pinned else ''} {x.msd_half_run_a2:.3g} Å²"
            + (f" ×{x.growth_ratio:.2g}" if x.growth_ratio is not None else "")
            for x in result.species
        ]
        return "framework MSD at T/2 (growth from T/10): " + "; ".join(parts) if parts else None

    def prepare(self, ctx: TrajectoryContext, unwrapper) -> None:
        self.ctx = ctx
        self.stride = max(1, -(-ctx.n_frames // MAX_FRAMES))
        self.indices = {
            el: ctx.indices_of(el) for el in dict.fromkeys(ctx.species) if el != ctx.mobile_species
        }
        self._all = (
            np.concatenate(list(self.indices.values())) if self.indices else np.array([], int)
        )
        self._frames: list[np.ndarray] = []

    def accumulate(self, chunk: FrameChunk) -> None:
        if not self._all.size:
            return
        first = (-chunk.start) % self.stride  # keep global frames 0, s, 2s, …
        disp = chunk.displacements(self._all)[first :: self.stride]
        self._frames.append(disp.astype(np.float32))

    def conclude(self) -> FrameworkMSDResult:
        ctx = self.ctx
        out = []
        if self._frames:
            disp = np.concatenate(self._frames)
            n = disp.shape[0]
            dt_ps = ctx.frame_interval_fs * self.stride / 1000.0
            thin = np.unique(np.round(np.geomspace(1, max(n - 1, 1), min(n - 1, 200))).astype(int))
            thin = np.concatenate([[0], thin[thin < n]])
            fixed = ctx.fixed_atoms
            col = 0
            for el, idx in self.indices.items():
                block = disp[:, col : col + len(idx)]
                col += len(idx)
                msd = msd_fft(block.reshape(n, -1)).reshape(n, len(idx), 3).sum(axis=2).mean(axis=1)
                half, tenth = msd[n // 2], msd[max(1, n // 10)]
                out.append(
                    SpeciesMSD(
                        element=el,
                        n_atoms=len(idx),
                        pinned=bool(fixed is not None and np.all(np.asarray(fixed)[idx])),
                        time_ps=(thin * dt_ps).tolist(),
                        msd_a2=msd[thin].tolist(),
                        msd_half_run_a2=float(half),
                        growth_ratio=float(half / tenth) if tenth > 0 else None,
                    )
                )
        return FrameworkMSDResult(
            source=ctx.source,
            frame_interval_fs=ctx.frame_interval_fs * self.stride,
            n_frames=sum(f.shape[0] for f in self._frames),
            drift_reference=ctx.reference_label,
            species=out,
        )
