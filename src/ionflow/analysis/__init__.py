"""Diffusion analysis: pure numpy/scipy, no jobflow, FireWorks or database imports.

readers (streaming trajectory formats) → msd (unwrap, drift removal, FFT MSD) →
diffusion (fit window, D*, D_σ, Haven ratio, σ, honest errors, regime) →
arrhenius (weighted fit, extrapolation with interval) → plots (lazy matplotlib).
"""

from ionflow.analysis.arrhenius import ArrheniusFit, fit_arrhenius, fit_arrhenius_from_analyses
from ionflow.analysis.diffusion import (
    DiffusionAnalysis,
    analyze_arrays,
    analyze_displacements,
    analyze_file,
    conductivity_factor_ms_cm,
    default_window_ps,
)

__all__ = [
    "ArrheniusFit",
    "DiffusionAnalysis",
    "analyze_arrays",
    "analyze_displacements",
    "analyze_file",
    "conductivity_factor_ms_cm",
    "default_window_ps",
    "fit_arrhenius",
    "fit_arrhenius_from_analyses",
]
