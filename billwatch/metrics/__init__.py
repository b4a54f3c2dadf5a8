"""Prometheus metrics: the billing counters moved after commit, the HTTP metrics, label sets.

The database gauges, ``/metrics`` and the rendered Prometheus rules read the domains, so they
live above them, in :mod:`billwatch.monitoring`.

``*_created`` series are turned off: in the text format they double the series count and carry
nothing Prometheus uses (counter resets are detected from the values).

In multiprocess mode every metric object writes a file under ``PROMETHEUS_MULTIPROC_DIR`` as soon
as it is defined (when a runtime is built); the directory is created here, when this package is
first imported, so an operator only has to name it.
"""

import os

from prometheus_client import disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
