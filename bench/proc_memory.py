"""Reading a process's memory from /proc: the figures the memory benchmarks compare."""

from __future__ import annotations


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and private (clean + dirty) memory of a process, in bytes."""
    values = {"rss": 0, "pss": 0, "private": 0}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for text in handle:
            key, _, rest = text.partition(":")
            if key in ("Rss", "Pss"):
                values[key.lower()] = int(rest.split()[0]) * 1024
            elif key in ("Private_Clean", "Private_Dirty"):
                values["private"] += int(rest.split()[0]) * 1024
    return values


def mapping_pss(pid: int, path: str) -> int:
    """Pss, in bytes, of every mapping of file ``path`` in process ``pid``."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as handle:
        for text in handle:
            fields = text.split()
            if fields and "-" in fields[0] and ":" not in fields[0]:
                inside = text.rstrip("\n").endswith(" " + path)
            elif inside and fields and fields[0] == "Pss:":
                total += int(fields[1]) * 1024
    return total
