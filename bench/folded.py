"""Summarise a py-spy ``--format raw`` profile (folded stacks): where the time goes.

    python -m bench.folded PROFILE.txt [--top 25] [--idle]

Prints the functions with the most samples on top of the stack (self) and anywhere in
it (total), as a share of the busy samples. Samples whose top frame is the event loop
waiting (``select``/``poll``) count as idle and are left out unless ``--idle``.
"""

from __future__ import annotations

import argparse
import collections
import re

IDLE = re.compile(r"\b(select|poll|epoll|_run_once|wait) \((selectors|threading)\.py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--idle", action="store_true")
    args = p.parse_args(argv)
    self_: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    with open(args.profile, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            if not args.idle and IDLE.search(frames[-1]):
                idle += n
                continue
            busy += n
            self_[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    print(f"{busy} busy samples, {idle} idle")
    for title, counter in (("self", self_), ("total", total)):
        print(f"\n-- {title}")
        for frame, n in counter.most_common(args.top):
            print(f"{100 * n / max(busy, 1):5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
