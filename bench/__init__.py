"""billwatch's benchmarks: every figure measured next to a baseline in the same run, on PostgreSQL.

Run with ``make bench`` (or ``python -m bench --scale 0.1`` for a quick pass). Not part of the
test suite: speed targets live here, never in timed unit tests.
"""
