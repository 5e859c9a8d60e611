"""Host contention: the share of CPU time a hypervisor gave to other guests (steal time).

On a shared virtual machine, steal time is the clearest sign that a latency measurement
was disturbed: the guest's vCPUs were ready to run and were not run.  Linux reports it in
the aggregate `cpu` line of /proc/stat (8th value, in clock ticks since boot); elsewhere
there is no such counter and the functions return None.
"""

from __future__ import annotations

from pathlib import Path

PROC_STAT = Path("/proc/stat")
# steal time above this during a latency measurement marks it as disturbed in reports and
# compare notes (on a quiet VM it stays under 1 %; on our shared CI hosts it reached 25 %)
DISTURBED_STEAL_PCT = 5.0


def cpu_ticks(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot, or None where not reported."""
    try:
        first = path.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu" or len(first) < 9:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    # already inside user/nice, so the total is the first eight
    values = [int(v) for v in first[1:9]]
    return values[7], sum(values)


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Steal time between two cpu_ticks() readings, in percent of all CPU time then."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def steal_readings(entries: list[dict]) -> list[tuple[dict, float]]:
    """(entry, cpu_steal_pct) of the ok result entries that recorded steal time."""
    readings = []
    for e in entries:
        pct = (e.get("metrics") or {}).get("cpu_steal_pct")
        if e.get("status") == "ok" and pct is not None:
            readings.append((e, pct))
    return readings


def disturbed(entries: list[dict]) -> list[tuple[dict, float]]:
    """The steal_readings above DISTURBED_STEAL_PCT."""
    return [(e, pct) for e, pct in steal_readings(entries) if pct > DISTURBED_STEAL_PCT]
