"""torch.profiler around a few generator calls: GPU kernels per call, how busy the GPU was, where the gaps are.

Writes PREFIX.txt (the summary line and the key_averages table) and PREFIX.json.gz (a Chrome trace: chrome://tracing
or ui.perfetto.dev); returns the summary for the result row.
"""

import gzip
import shutil
import time
from pathlib import Path

import torch


def _gpu_intervals(prof):
    """(start, end) in microseconds of every device-side event (kernels, copies, also those replayed by CUDA graphs)."""
    cuda = torch.autograd.DeviceType.CUDA
    return sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == cuda)


def summarize(intervals, calls, wall_s):
    """GPU ops per call, busy time (their union), and the idle gaps between them (launch overhead, host work)."""
    busy, gaps, end = 0.0, [], None
    for start, stop in intervals:
        if end is not None and start > end:
            gaps.append(start - end)
        begin = start if end is None else max(start, end)       # overlapping events count once
        busy += max(0.0, stop - begin)
        end = stop if end is None else max(end, stop)
    return {'calls': calls, 'gpu_ops_per_call': len(intervals) / calls, 'wall_ms_per_call': 1e3 * wall_s / calls,
            'gpu_busy_ms_per_call': busy / 1e3 / calls, 'gpu_busy_share': busy / 1e6 / wall_s if wall_s else None,
            'gaps_per_call': len(gaps) / calls, 'largest_gap_us': max(gaps, default=0.0),
            'gap_ms_per_call': sum(gaps) / 1e3 / calls}


def profile_calls(call, prefix, calls=5, sync=lambda: None):
    """Profile `calls` calls of `call()` (already warm); files go to PREFIX.txt and PREFIX.json.gz."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync()
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        wall = time.perf_counter() - start
    summary = summarize(_gpu_intervals(prof), calls, wall)
    head = (f'{prefix.name}: {calls} calls, {summary["wall_ms_per_call"]:.3f} ms wall per call (profiler on), GPU busy '
            f'{summary["gpu_busy_ms_per_call"]:.3f} ms per call, {summary["gpu_ops_per_call"]:.0f} GPU ops and '
            f'{summary["gaps_per_call"]:.0f} gaps per call (largest {summary["largest_gap_us"]:.0f} us)\n')
    sort = 'self_device_time_total' if len(activities) > 1 else 'self_cpu_time_total'
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90)
    Path(f'{prefix}.txt').write_text(head + table + '\n')
    trace = Path(f'{prefix}.json')
    prof.export_chrome_trace(str(trace))
    with open(trace, 'rb') as src, gzip.open(f'{trace}.gz', 'wb') as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    return summary
