"""Profiling the processor with py-spy, during a drain and under a steady load.

py-spy samples the ``python -m processor run`` process from outside (``record --threads``, raw
collapsed stacks, 100 Hz), in one of two ways:

- ``gil`` (the drain): only the thread holding the GIL is sampled, so the samples are where the
  processor's Python code spends CPU, and their count over the recording's length says how much
  of the time the GIL was held at all;
- ``wall`` (the steady load): every thread, waiting included. ``Condition.wait`` is a worker with
  no batch to apply; ``Connection.wait`` is psycopg waiting for PostgreSQL's answer *or* for the
  GIL once it arrived (compare with ``pg_stat_activity`` to tell them apart).

The raw files load into speedscope or ``flamegraph.pl``. The summary groups threads by name
(``worker-0`` .. ``worker-3`` are ``worker-*``) and lists each group's top frames by self time
(the leaf of a stack) and the product's frames by inclusive time.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from bench.drain import measure_drain
from bench.latency import measure_latency
from bench.results import FrameCount, ProfileResult, ThreadProfile
from bench.workload import Workload
from testkit.services import Services

#: Samples per second.
RATE_HZ: Final = 100
#: Frames listed per thread group.
TOP: Final = 8
#: Source folders whose frames count as the product's (inclusive time is listed for these).
PRODUCT_PREFIXES: Final = ("processor/", "projections/", "schemas/")

_THREAD: Final = re.compile(r"^thread \((?:0x)?[0-9A-Fa-f]+\)(?::\s*(?P<name>.*))?$")
_LINE: Final = re.compile(r":\d+\)$")
NO_PY_SPY: Final = "py-spy is not installed (pip install -e '.[bench]')"


def py_spy_path() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH (None when missing)."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def _function(frame: str) -> str:
    """``name (file:line)`` without the line: samples add up per function."""
    return _LINE.sub(")", frame.strip())


def _thread_group(frame: str) -> str | None:
    match = _THREAD.match(frame.strip())
    if match is None:
        return None
    name = match.group("name") or "unnamed"
    return re.sub(r"\d+$", "*", name)


def summarise(lines: Iterable[str], top: int = TOP) -> list[ThreadProfile]:
    """Per thread group: samples, top frames by self time, top product frames by inclusive time.

    Args:
        lines: py-spy ``raw`` output (``frame;frame;... count``), recorded with ``--threads``.
        top: frames listed per group.
    """
    totals: Counter[str] = Counter()
    self_time: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    for line in lines:
        stack, _, number = line.rstrip("\n").rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        frames = stack.split(";")
        group = _thread_group(frames[0])
        if group is None:
            group = "all"
        else:
            frames = frames[1:]
        if not frames:
            continue
        functions = [_function(f) for f in frames]
        totals[group] += samples
        self_time.setdefault(group, Counter())[functions[-1]] += samples
        product = {f for f in functions if any(f"({p}" in f for p in PRODUCT_PREFIXES)}
        counter = inclusive.setdefault(group, Counter())
        for function in product:
            counter[function] += samples

    def shares(counter: Counter[str], total: int) -> list[FrameCount]:
        return [
            FrameCount(frame, count, round(100.0 * count / total, 1))
            for frame, count in counter.most_common(top)
        ]

    return [
        ThreadProfile(
            thread=group,
            samples=total,
            self_time=shares(self_time[group], total),
            inclusive=shares(inclusive.get(group, Counter()), total),
        )
        for group, total in totals.most_common()
    ]


#: py-spy flags of each sampling: ``gil`` keeps only samples of the thread holding the GIL
#: (where Python spends CPU), ``wall`` keeps every thread, waiting included.
SAMPLING_FLAGS: Final = {"gil": "--gil", "wall": "--idle"}


class PySpyRecorder:
    """Records a process with py-spy while a ``with`` block runs (SIGINT at the end makes py-spy
    write its raw file); ``seconds`` is how long it recorded.

    Args:
        executable: the py-spy program.
        raw_path: where the collapsed stacks go.
        log_path: py-spy's own output.
        sampling: ``gil`` or ``wall`` (``SAMPLING_FLAGS``).
    """

    def __init__(self, executable: str, raw_path: Path, log_path: Path, sampling: str) -> None:
        self.executable = executable
        self.raw_path = raw_path
        self.log_path = log_path
        self.sampling = sampling
        self.seconds = 0.0

    @contextmanager
    def __call__(self, process: subprocess.Popen[bytes]) -> Iterator[None]:
        """Record ``process`` until the block ends."""
        self.raw_path.unlink(missing_ok=True)
        command = [
            self.executable,
            "record",
            "--pid",
            str(process.pid),
            "--format",
            "raw",
            "--output",
            str(self.raw_path),
            "--threads",
            SAMPLING_FLAGS[self.sampling],
            "--rate",
            str(RATE_HZ),
        ]
        with self.log_path.open("ab") as log:
            spy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds = time.monotonic() - started
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()

    def result(self, mode: str, events: int, offered_rate: float = 0.0) -> ProfileResult:
        """The recording's summary (``available = False`` when py-spy wrote nothing)."""
        if not self.raw_path.exists():
            return ProfileResult(
                available=False, mode=mode, reason=f"py-spy wrote nothing; see {self.log_path}"
            )
        with self.raw_path.open() as lines:
            threads = summarise(lines)
        samples = sum(t.samples for t in threads)
        return ProfileResult(
            available=True,
            mode=mode,
            sampling=self.sampling,
            events=events,
            rate_hz=RATE_HZ,
            seconds=self.seconds,
            gil_held=samples / (RATE_HZ * self.seconds)
            if self.sampling == "gil" and self.seconds > 0
            else 0.0,
            raw_path=str(self.raw_path),
            offered_rate=offered_rate,
            threads=threads,
        )


def profile_drain(services: Services, workload: Workload, out_dir: Path) -> ProfileResult:
    """Drain ``workload`` with py-spy attached to the processor, sampling the GIL holder: where
    the processor spends CPU while it is as busy as it gets.

    A missing py-spy (``pip install -e '.[bench]'``) or a recording that failed (no ptrace
    permission) gives ``available = False`` with the reason, not an error.
    """
    executable = py_spy_path()
    if executable is None:
        return ProfileResult(available=False, mode="drain", reason=NO_PY_SPY)
    recorder = PySpyRecorder(
        executable, out_dir / "profile-drain.txt", out_dir / "py-spy.log", "gil"
    )
    measure_drain(
        services, workload, out_dir / "profile-drain-processor.log", observer=recorder, verify=False
    )
    return recorder.result("drain", len(workload.events))


def profile_live(
    services: Services, load: Workload, warmup: Workload, rate: float, out_dir: Path
) -> ProfileResult:
    """Offer ``load`` at ``rate`` events/s to a running processor (as the latency step does) with
    py-spy sampling every thread, waiting included: where an event's latency goes."""
    executable = py_spy_path()
    if executable is None:
        return ProfileResult(available=False, mode="live", reason=NO_PY_SPY)
    recorder = PySpyRecorder(
        executable, out_dir / "profile-live.txt", out_dir / "py-spy.log", "wall"
    )
    measure_latency(
        services, load, warmup, rate, out_dir / "profile-live-processor.log", observer=recorder
    )
    return recorder.result("live", len(load.events), rate)
