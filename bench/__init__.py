"""poolctl's benchmark suite: `python -m bench.run`, run from the repository root.

Each benchmark measures a poolctl code path against a baseline written out
in the benchmark itself (a hand-written loop, raw redis-py calls, a bare
interpreter start) in the same run, and passes or fails on the ratio.

Module map:
    run       command line, benchmark registry, exit status
    core      result rows, targets, run sizes, round runner, stopwatch
    env       the run's database, Redis key prefix, config files and child processes
    data      tables, sample rows and server-generated rows
    report    machine description, table, JSON, RESULTS.md
    workers   child processes: paced consumers, the memory probe
    fill, keepup, pop, idle, plans, startup, memory   one benchmark each
"""
