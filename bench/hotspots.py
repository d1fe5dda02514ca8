"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile: the
functions with the most samples on the stack (inclusive) and on top (self).

    python bench/hotspots.py profile.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

__all__ = ["summarise", "main"]

_LINE = re.compile(r"^(.*) (\d+)$")


def _name(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; drop the line number
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    path = re.sub(r"^.*/(site-packages|lib/python3\.\d+|src)/", "", path)
    return f"{func} ({path})"


def summarise(text: str, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Inclusive and self shares (percent of all samples) of the top functions."""
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        frames = [_name(f) for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        total += n
        for f in set(frames):
            incl[f] += n
        if frames:
            self_[frames[-1]] += n
    pct = 100.0 / total if total else 0.0
    return {"inclusive": [(f, n * pct) for f, n in incl.most_common(top)],
            "self": [(f, n * pct) for f, n in self_.most_common(top)],
            "samples": [("total", float(total))]}


def main(argv: list[str] | None = None) -> int:
    """Print the summary of a collapsed-stack profile."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args(argv)
    s = summarise(open(a.file).read(), a.top)
    print(f"samples: {int(s['samples'][0][1])}")
    for kind in ("self", "inclusive"):
        print(f"-- {kind}")
        for f, v in s[kind]:
            print(f"{v:6.1f}%  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
