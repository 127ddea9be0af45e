"""Moved: ``ionflow run`` is :func:`ionflow.backends.base.run_campaign`; the local FireWorks
worker is :mod:`ionflow.backends.fireworks_local`.

Kept so that ``from ionflow.dispatch import run_campaign`` (tests, scripts) keeps working.
"""

from __future__ import annotations

from ionflow.backends.base import run_campaign

__all__ = ["run_campaign"]
