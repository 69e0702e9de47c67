"""CPU seconds by process over one whole `streamloop demo` run: where the loop's CPU goes.

Runs the demo command given after ``--`` (default: the 50k headless demo), samples the
``utime + stime`` of its process tree every 2 s from /proc, and prints one line per process
(the last value seen: processes that exit keep their total), the total, and the demo's summary
line. Linux only.

    .venv/bin/python benchmarks/demo_cpu.py
    .venv/bin/python benchmarks/demo_cpu.py -- --events 16000 --drift-at 1.0 --bad-promotion-at 0.6
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY_S = 2.0


def stat_of(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds: utime + stime) of a process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) for every process readable in /proc."""
    stats = {int(entry): stat_of(int(entry)) for entry in os.listdir("/proc") if entry.isdigit()}
    return {pid: stat for pid, stat in stats.items() if stat is not None}


def descendants(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (parent, _) in table.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def main(argv: list[str]) -> None:
    options = argv[argv.index("--") + 1:] if "--" in argv else ["--events", "50000"]
    data_dir = tempfile.mkdtemp(prefix="demo-cpu-")
    command = [sys.executable, "-m", "streamloop.cli.main", "demo", "--headless", "--json",
               "--data-dir", data_dir, *options]
    started = time.monotonic()
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603 - our own CLI
    seen: dict[int, tuple[str, float]] = {}
    while demo.poll() is None:
        table = process_table()
        for pid in descendants(demo.pid, table):
            if pid in table:
                seen[pid] = (command_of(pid) or seen.get(pid, ("?", 0.0))[0], table[pid][1])
        time.sleep(SAMPLE_EVERY_S)
    output = demo.stdout.read() if demo.stdout else ""
    wall = time.monotonic() - started
    shutil.rmtree(data_dir, ignore_errors=True)  # the embedded broker keeps every record
    total = sum(cpu for _, cpu in seen.values())
    for _pid, (name, cpu) in sorted(seen.items(), key=lambda item: -item[1][1]):
        if cpu >= 0.5:
            print(f"{cpu:8.1f} CPU-s  {cpu / wall * 100:5.1f} % of a core  {name[:100]}")
    print(f"{total:8.1f} CPU-s in {wall:.0f} s of wall time ({total / wall * 100:.0f} % of a core)")
    summary = output.strip().splitlines()[-1] if output.strip() else "{}"
    keys = ("elapsed_s", "throttled_s", "throttled_by", "throughput_eps", "lost", "drift_detected_at",
            "promotions", "recovered")
    print(json.dumps({k: json.loads(summary).get(k) for k in keys}))


if __name__ == "__main__":
    main(sys.argv[1:])
