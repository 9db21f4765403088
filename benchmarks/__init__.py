"""charlm's benchmarks: engine tokens/s, HTTP serving, training throughput, each against a reference.

Run `python -m benchmarks` from the repository root (`make bench`); `--quick` is a seconds-long smoke run.
Never part of `make test`: the numbers need a quiet machine.
"""
