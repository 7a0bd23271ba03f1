"""One training step under torch's profiler in every rank, and the driver under cProfile (config key
``profile_step``).

Where a step's time goes is the first question when a run is slower than expected, and its answer is spread
over processes: the policy ranks train and (colocated) generate, the reference and critic ranks compute
log-probs, the driver scores and batches. Around the profiled step every role's ranks record operators, kernels
and copies (``RankWorker.profile_start``/``profile_stop``) and the driver records its Python calls; everything
lands in ``<output_dir>/profile/step<N>/``:

- ``<role>_rank<r>.txt``: operators by self device time and by self host time;
- ``<role>_rank<r>.json.gz``: the Chrome trace (chrome://tracing, ui.perfetto.dev);
- ``driver.txt``: the driver's functions by cumulative time (cProfile).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
from pathlib import Path
from typing import Iterator, Mapping, Optional


def profile_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "profile" / f"step{step}"


@contextlib.contextmanager
def profiled_step(wanted: Optional[int], step: int, groups: Mapping, output_dir: Path) -> Iterator[None]:
    """Profile the block if ``step`` (the logged, 1-based step number) is ``wanted``; else do nothing."""
    if wanted is None or step != wanted:
        yield
        return
    directory = profile_dir(output_dir, step)
    started = []
    for name, group in groups.items():
        group.run("profile_start")
        started.append(name)
    driver = cProfile.Profile()
    driver.enable()
    try:
        yield
    finally:
        driver.disable()
        written = []
        for name in started:
            for paths in groups[name].run("profile_stop", str(directory), name):
                written += paths
        text = io.StringIO()
        pstats.Stats(driver, stream=text).sort_stats("cumulative").print_stats(60)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "driver.txt").write_text(text.getvalue())
        print(f"profile of step {step}: {directory} ({len(written) + 1} files)", flush=True)
