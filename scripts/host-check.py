#!/usr/bin/env python3
"""How fast this machine is right now: the compare script runs this before each scenario of
each round, with both brokers stopped.

On this virtual machine the same code can cost a third more from one hour to the next while
the guest sees almost no steal time, so the cause is not visible from inside; the drift
moves every absolute figure of a run. Two fixed workloads make that drift visible next to the results:

  compute    a fixed loop of integer arithmetic, in CPU milliseconds of this process
  ping-pong  one byte sent back and forth between two processes over pipes, in µs per
             round trip: each trip wakes a sleeping process, the hand-off that dominates
             a broker's cost at low rates

Each is run REPEATS times and the median kept: the same loop can take half as long again
from one second to the next here. Usage: host-check.py ROUND SCENARIO; prints one JSON line:
{"scenario": "host", "label": "host", "round": ROUND, "before": SCENARIO, ...}.
"""
import json
import os
import statistics
import sys
import time

REPEATS = 5
COMPUTE_ITERATIONS = 1_000_000
PINGPONG_ROUND_TRIPS = 5_000


def compute_ms():
    start = time.process_time()
    x = 1
    for _ in range(COMPUTE_ITERATIONS):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return (time.process_time() - start) * 1000


def pingpong_us():
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for _ in range(PINGPONG_ROUND_TRIPS):
            os.read(to_child_r, 1)
            os.write(to_parent_w, b"x")
        os._exit(0)
    start = time.perf_counter()
    for _ in range(PINGPONG_ROUND_TRIPS):
        os.write(to_child_w, b"x")
        os.read(to_parent_r, 1)
    elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
        os.close(fd)
    return elapsed / PINGPONG_ROUND_TRIPS * 1e6


def main():
    round_no = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    before = sys.argv[2] if len(sys.argv) > 2 else ""
    line = {
        "scenario": "host",
        "label": "host",
        "round": round_no,
        "before": before,
        "at": time.strftime("%H:%M", time.gmtime()),
        "host_compute_ms": round(statistics.median(compute_ms() for _ in range(REPEATS)), 1),
        "host_pingpong_us": round(statistics.median(pingpong_us() for _ in range(REPEATS)), 2),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
