"""The benchmark harness behind ``fastattn bench``.

``main(argv)`` parses the command line (``fastattn bench -h``), measures the device's ceilings
(a large matmul, a large copy), times every case of the chosen families for every provider and
writes report.md, results.json and one PNG per family into the output folder.

Modules: workloads (cases and sizes), providers (what each implementation runs), flops (work
per case), timing (CUDA events / wall clock, quantiles, peak memory), report and plots.
Nothing runs on import.
"""
from fastattn.benchmark.runner import main, run

__all__ = ["main", "run"]
