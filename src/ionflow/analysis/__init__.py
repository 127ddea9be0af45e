"""Trajectory analyses: pure numpy/scipy, no jobflow, FireWorks or database imports.

readers (streaming trajectory formats) → stream (one pass: unwrapping, drift removal,
chunks fed to every registered analysis) → the analyses (``diffusion``: fit window, D*,
D_σ, Haven ratio, σ, honest errors, regime; see :data:`ANALYSES`) → arrhenius (weighted
fit, extrapolation with interval) → plots (lazy matplotlib).

Registration: importing an analysis module registers its class; the imports below are
the registry's table of contents.
"""

from ionflow.analysis import (  # noqa: F401  (registers "density", "jumps")
    density,
    framework_msd,  # noqa: F401  (registers "framework-msd")
    jumps,
    rotation,  # noqa: F401  (registers "rotation")
    vdos,  # noqa: F401  (registers "vdos")
)
from ionflow.analysis.arrhenius import ArrheniusFit, fit_arrhenius, fit_arrhenius_from_analyses
from ionflow.analysis.diffusion import (
    Diffusion,
    DiffusionAnalysis,
    analyze_arrays,
    analyze_displacements,
    analyze_file,
    conductivity_factor_ms_cm,
    default_window_ps,
)
from ionflow.analysis.stream import (
    ANALYSES,
    FrameChunk,
    StreamedAnalysis,
    TrajectoryContext,
    analyze_in_memory,
    analyze_trajectory,
    get_analysis,
    register,
)

__all__ = [
    "ANALYSES",
    "ArrheniusFit",
    "Diffusion",
    "DiffusionAnalysis",
    "FrameChunk",
    "StreamedAnalysis",
    "TrajectoryContext",
    "analyze_arrays",
    "analyze_displacements",
    "analyze_file",
    "analyze_in_memory",
    "analyze_trajectory",
    "conductivity_factor_ms_cm",
    "default_window_ps",
    "fit_arrhenius",
    "fit_arrhenius_from_analyses",
    "get_analysis",
    "register",
]
