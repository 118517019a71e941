"""Shared helpers of the CPU benchmarks: interleaved timing, machine/load description, tables.

Why interleaving: this machine's 2 cores are shared with other jobs, so the same work can take
5-50x longer from one minute to the next. Running the contenders alternately (A B, then B A, ...)
in one process and taking medians makes background load hit both alike, so their *ratio* stays
meaningful even when the absolute images/s do not.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import torch


@dataclass
class Sample:
    """One timed call: wall seconds, the CPU seconds this process used, and the CPU seconds the
    whole machine was busy (from /proc/stat), so that busy - ours = what other jobs took."""

    wall_s: float
    cpu_s: float
    machine_busy_s: float = float("nan")


@dataclass
class Series:
    """All samples of one contender, in the order they were taken."""

    name: str
    samples: List[Sample] = field(default_factory=list)

    @property
    def walls(self) -> List[float]:
        return [s.wall_s for s in self.samples]

    def median_wall(self) -> float:
        return statistics.median(self.walls)

    def background_cores(self) -> float:
        """Average number of cores other processes kept busy while this contender ran."""
        return background_cores(self.samples)


def background_cores(samples: Sequence[Sample]) -> float:
    """Cores other processes kept busy during these samples (0 = the machine was ours; 1 on this
    2-core machine = half of it was taken). OpenMP threads spinning at barriers count as *our*
    CPU time, so our own CPU/wall alone would hide contention; /proc/stat does not."""
    other = sum(s.machine_busy_s - s.cpu_s for s in samples)
    wall = sum(s.wall_s for s in samples)
    return max(other / wall, 0.0) if wall > 0 else float("nan")


def merge_series(name: str, *parts: Series) -> Series:
    """Round-by-round sum of several contenders' samples (e.g. one code path on two model
    instances), so per-round ratios compare pooled times."""
    merged = Series(name)
    for samples in zip(*(p.samples for p in parts)):
        merged.samples.append(Sample(sum(x.wall_s for x in samples), sum(x.cpu_s for x in samples),
                                     sum(x.machine_busy_s for x in samples)))
    return merged


def process_cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_s() -> float:
    """CPU seconds all cores have spent not idle since boot (/proc/stat; 10 ms resolution)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], object]) -> Sample:
    """Run fn once and return its wall time, our CPU time and the machine's busy time."""
    b0, c0, t0 = machine_busy_s(), process_cpu_s(), time.perf_counter()
    fn()
    return Sample(time.perf_counter() - t0, process_cpu_s() - c0, machine_busy_s() - b0)


def interleave(contenders: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, Series]:
    """Time each contender `repeats` times, alternating the order every round (AB, BA, AB ...).

    The alternation cancels slow drifts (a background job starting halfway, thermal or frequency
    changes) that a fixed order would charge to whichever contender always runs second. `warmup`
    untimed rounds first: allocator, oneDNN kernel selection and first-touch page faults."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    series = {name: Series(name) for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            series[name].samples.append(timed(contenders[name]))
    return series


def paired_speed_ratios(a: Series, b: Series) -> List[float]:
    """Speed of a relative to b (time_b / time_a) for each round: the two calls of a round ran
    back to back, so they saw nearly the same background load; a burst of load spoils one pair
    instead of shifting one contender's whole distribution."""
    return [tb / ta for ta, tb in zip(a.walls, b.walls)]


def speed_ratios(a: Series, b: Series) -> Dict[str, float]:
    """Three estimates of a's speed relative to b; they agree when the load was steady.

    paired_median: median of per-round ratios (the headline figure: robust to load that comes and
    goes); of_medians: median time of b / median time of a; of_best: fastest b / fastest a (the
    least-disturbed call of each)."""
    return dict(paired_median=statistics.median(paired_speed_ratios(a, b)),
                of_medians=b.median_wall() / a.median_wall(),
                of_best=min(b.walls) / min(a.walls))


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n: int = 2000, seed: int = 0) -> List[float]:
    """Percentile-bootstrap confidence interval of the median: how far the headline median could
    move with other draws of the same noise (wide here: calls vary 2-10x under shared load)."""
    import random

    if len(values) < 2:
        return [float("nan"), float("nan")]
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    lo = meds[int((1 - level) / 2 * n)]
    hi = meds[min(int((1 + level) / 2 * n), n - 1)]
    return [lo, hi]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with torch limited to n intra-op threads, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages (runnable + running tasks, all processes on the host)."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    """CPU name as /proc/cpuinfo gives it (a VM may show a generic name such as "AMD EPYC")."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "amx_tile")) -> List[str]:
    """Which of the vector-ISA flags that matter for torch's CPU kernels this CPU reports."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        flags = []
    return [w for w in wanted if w in flags]


def machine_info() -> Dict[str, object]:
    """What a reader needs to judge the absolute figures: CPU, cores, threads, versions, load."""
    import torchvision

    return dict(cpu=cpu_model(), logical_cpus=os.cpu_count(), cpu_flags=cpu_flags(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__, torchvision=torchvision.__version__,
                python=platform.python_version(), load_average_at_start=load_average())


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal too), so the README can take it verbatim."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def rounded(value: Optional[float], digits: int = 3) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def break_even_text(cc: Dict[str, Any]) -> str:
    """The compile benchmark's break-even, in words (None means the compiled step is no faster)."""
    epochs = cc["break_even_full_epochs"]
    grid = f"the grid plans {cc['planned_max_epochs']}"
    return f"never, compiled is no faster ({grid})" if epochs is None else f"after {epochs} full epochs ({grid})"
