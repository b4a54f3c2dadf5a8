"""Monitoring: what ``/metrics`` serves beside the counters, and the Prometheus rules.

It sits above the domains it reads: the database gauges ask each domain for its own figures
(:mod:`billwatch.monitoring.gauges`), ``/metrics`` joins them to the runtime's counters
(:mod:`billwatch.monitoring.exposition`), and the alert rules' thresholds render the Prometheus
rules (:mod:`billwatch.monitoring.prometheus_rules`). The counters themselves, which every
domain moves, stay below in :mod:`billwatch.metrics`.
"""
