"""Benchmarks behind ``bitlm-bench``: each measures a figure and the reference it is compared
with in the same run (these machines are noisy), and returns a JSON-ready dict.

``throughput`` (Lightning vs a plain loop), ``memory`` (depth scaling of the stacks),
``attention`` (chunked vs unchunked), ``generation`` (single stream and batched decoding),
``codec`` (bit codec vs per-byte Python), ``compare`` (variants at the same wall-clock budget
over seeds).
"""
