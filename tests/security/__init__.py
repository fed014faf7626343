"""Security tests: hostile input against the peer-facing decoders.

They check what comes out of each decoder, never how long it took: what
one hostile input costs is ``benchmarks/bench_decoders.py``'s figure.
"""
