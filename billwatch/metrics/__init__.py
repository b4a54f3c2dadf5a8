"""Prometheus metrics: billing counters after commit, HTTP metrics, database gauges, /metrics.

``*_created`` series are turned off: in the text format they double the series count and carry
nothing Prometheus uses (counter resets are detected from the values).

In multiprocess mode every metric object writes a file under ``PROMETHEUS_MULTIPROC_DIR`` as soon
as it is defined, which is while this package's modules are imported; the directory is created
here, first, so an operator only has to name it.
"""

import os

from prometheus_client import disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
