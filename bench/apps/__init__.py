"""Baseline applications the benchmarks measure billwatch against (served by uvicorn)."""
