"""Sampling profiles of server processes during one phase of a bench run (`bench.run --profile DIR`).

py-spy samples each process from outside (`--nonblocking`: it does not pause the process,
so the run's timings move little, but numbers from a profiled run are not the table's).
Each recording is py-spy's raw format (collapsed stacks, for flame-graph tools); beside it,
a summary lists the functions with the most samples on top of the stack (self) and anywhere
in it (inclusive).

Usage: python -m bench.profiles FILE.txt...   (prints the summary of recordings)
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

RATE = 250  # samples per second
_LINE_NUMBER = re.compile(r":\d+\)$")


@contextlib.contextmanager
def recording(pids: list[int], stem: Path) -> Iterator[list[Path]]:
    """py-spy on each of `pids` while the block runs; yields the files it writes."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}-{i}.txt") for i in range(len(pids))]
    options = ["--rate", str(RATE), "--format", "raw", "--nonblocking"]
    procs = [
        subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), *options, "--output", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, path in zip(pids, paths, strict=True)
    ]
    try:
        yield paths
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) per line of a raw recording, frames outermost first, without line numbers."""
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        if stack and count.isdigit():
            yield [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")], int(count)


def summarize(paths: list[Path], top: int = 15) -> str:
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for path in paths:
        for frames, count in stacks(path):
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                anywhere[frame] += count
    if not total:
        return "no samples\n"
    out = [f"{total} samples at {RATE}/s ({total / RATE:.1f} s of CPU) in {', '.join(p.name for p in paths)}"]
    for title, counter in (("self", own), ("inclusive", anywhere)):
        out.append(f"\ntop {top} by {title} samples:")
        out += [f"{count / total:6.1%}  {frame}" for frame, count in counter.most_common(top)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(summarize([Path(p) for p in sys.argv[1:]]), end="")
