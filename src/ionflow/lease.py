"""Moved: leases, fencing and the run-directory lock are :mod:`ionflow.backends.lease`.

``import ionflow.lease`` gives that module itself (one lease context, one set of classes),
so that the MD makers, tests and scripts written against the old path keep working.
"""

import sys

from ionflow.backends import lease

sys.modules[__name__] = lease
