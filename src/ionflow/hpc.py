"""Moved: the FireWorks-Slurm backend is :mod:`ionflow.backends.fireworks_slurm`.

``import ionflow.hpc`` gives that module itself (every name, and monkeypatching it patches
the backend), so that tests and scripts written against the old path keep working.
"""

import sys

from ionflow.backends import fireworks_slurm

sys.modules[__name__] = fireworks_slurm
