"""GPU timing shared by the benchmark scripts: CUDA events around the work, after one warm-up."""

import statistics

import torch


def timed(fn, repeats: int = 3) -> tuple[float, list[float]]:
    """(median seconds, every measurement) of `fn()` over `repeats` runs after a warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times), times
