"""Benchmarks against peers: ``python -m bench.run [--quick] [--only SECTION]`` (or ``make bench``).

Not part of ``make test``. Every server runs on 127.0.0.1 and is stopped at the end; results go to
``bench/results/latest.md`` (and a timestamped copy).
"""
