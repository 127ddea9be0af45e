"""ionflow: AIMD/MLMD diffusion campaigns for superionic conductors."""

__version__ = "0.1.0"
