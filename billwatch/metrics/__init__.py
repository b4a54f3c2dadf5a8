"""Prometheus metrics: billing counters after commit, HTTP metrics, database gauges, /metrics.

``*_created`` series are turned off: in the text format they double the series count and carry
nothing Prometheus uses (counter resets are detected from the values).
"""

from prometheus_client import disable_created_metrics

disable_created_metrics()
