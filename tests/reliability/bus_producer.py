"""Producer processes for tests/reliability/test_bus_crash.py, started by a small fork server.

Starting Python with pyarrow takes ~0.5 s, too slow for hundreds of kill -9s, so the test starts
this script once: it imports keel and then forks producer children on command. Commands (stdin,
one per line) and replies (stdout, one line each, written with a single os.write so lines from
several processes never interleave):

    spawn <url> <stream> <writer> <threads> <seed> <segment_bytes>  ->  pid <writer> <pid>
    kill <pid>                                                     ->  dead <pid>   (SIGKILL, reaped)
    quit

The child itself writes ``ready <writer>`` once its bus is open (recovery done).

A child opens the bus and runs <threads> threads; each produces batches of 1-40 records whose
values are ``<writer>:<thread>:<seq>`` (keys random, a third of them null) and, only after
``produce`` returned, writes ``ack <writer>:<thread> <first seq> <last seq>``.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time

import pyarrow as pa

import keel.bus.file  # noqa: F401 - imported before forking, so children start producing at once
from keel.bus import open_bus

# pyarrow imports pandas, when it is installed, the first time a batch is built from a dict (~0.3 s):
# do it here, before forking, or every child would pay it before its first append and the kills, at
# most 0.15 s after "ready", would land before any record was acknowledged
pa.record_batch({"warm": pa.array([b""], pa.binary())})


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def produce_forever(url: str, stream: str, writer: str, threads: int, seed: int, segment_bytes: int) -> None:
    bus = open_bus(url, segment_bytes=segment_bytes)
    say(f"ready {writer}")

    def work(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        seq = 0
        while True:
            n = rng.randint(1, 40)
            keys = [None if rng.random() < 0.3 else f"k{rng.randrange(50)}".encode() for _ in range(n)]
            batch = pa.record_batch({
                "key": pa.array(keys, pa.binary()),
                "value": pa.array([f"{writer}:{t}:{seq + i}".encode() for i in range(n)], pa.binary()),
            })
            bus.produce(stream, batch)
            say(f"ack {writer}:{t} {seq} {seq + n - 1}")
            seq += n

    for t in range(threads):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    while True:
        time.sleep(60)


def main() -> None:
    children: set[int] = set()
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "spawn":
            url, stream, writer, threads, seed, segment_bytes = cmd[1], cmd[2], cmd[3], int(cmd[4]), int(cmd[5]), int(cmd[6])
            pid = os.fork()
            if pid == 0:
                try:
                    produce_forever(url, stream, writer, threads, seed, segment_bytes)
                finally:
                    os._exit(1)
            children.add(pid)
            say(f"pid {writer} {pid}")
        elif cmd[0] == "kill":
            pid = int(cmd[1])
            if pid in children:  # only our own children, and never one already reaped
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                children.discard(pid)
            say(f"dead {pid}")
        elif cmd[0] == "quit":
            break
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
