"""charlm's benchmarks: engine tokens/s, continuous arrivals, HTTP serving, training, each against a reference.

Run `python -m benchmarks` from the repository root (`make bench`); `--quick` is a minutes-long smoke run.
Never part of `make test`: the numbers need a quiet machine.
"""
