"""Key file updates from concurrent processes: no created key is lost, no revoked key comes back;
and a write that fails leaves the old file whole.

`keel keys create` and `keel keys revoke` are separate processes that each read, change and rewrite
keys.json; without a lock around that, one rewrites the file from a copy read before the other's
change, dropping a new key or un-revoking an old one."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

from keel.errors import NotFoundError
from keel.serve.keys import create_key, list_keys, revoke_key

PROCESSES = 4
MIN_OVERLAPS = 40  # operations that started while another process was inside one (proof of a race)
MAX_OPS = 3000  # per process, a cap only


def _worker(state_dir: str, me: int, barrier: Any, busy: Any, overlaps: Any, out: str) -> None:
    created: list[str] = []
    revoked: list[str] = []
    vanished: list[str] = []  # own keys already gone when this process came to revoke them
    barrier.wait()
    for op in range(MAX_OPS):
        if overlaps.value >= MIN_OVERLAPS and op >= 20:
            break
        with busy.get_lock():
            busy.value += 1
            if busy.value > 1:
                with overlaps.get_lock():
                    overlaps.value += 1
        try:
            if op % 3 == 2:  # revoke one of this process's own live keys
                victim = created[(len(revoked) + len(vanished)) * 2]
                try:
                    revoke_key(Path(state_dir), victim)
                    revoked.append(victim)
                except NotFoundError:
                    vanished.append(victim)
            else:
                record, _ = create_key(Path(state_dir), f"p{me}-{op}", ["read:*"])
                created.append(record.id)
        finally:
            with busy.get_lock():
                busy.value -= 1
    Path(out).write_text(json.dumps([me, created, revoked, vanished]))


def test_concurrent_creates_and_revokes_lose_nothing_and_resurrect_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    busy = ctx.Value("i", 0)
    overlaps = ctx.Value("i", 0)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "state"), i, barrier, busy, overlaps,
                                                 str(tmp_path / f"result-{i}.json")))
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(PROCESSES)]
    assert overlaps.value >= MIN_OVERLAPS, "the processes never ran side by side: the race was not tested"
    created = {k for _, c, _, _ in results for k in c}
    revoked = {k for _, _, r, _ in results for k in r}
    assert [v for *_, v in results] == [[]] * PROCESSES  # no process found one of its own keys gone
    assert len(revoked) >= 10 and len(created) - len(revoked) >= 20
    stored = {r.id: r for r in list_keys(tmp_path / "state")}
    lost = created - stored.keys()
    resurrected = {k for k in revoked if k in stored and stored[k].revoked is None}
    assert (lost, resurrected) == (set(), set())
    assert all(stored[k].revoked is None for k in created - revoked)


def _create_until_the_file_limit(state_dir: str, out: str) -> None:
    import resource
    import signal

    from keel.errors import KeelError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))  # files of at most 1500 bytes: a few keys
    made, error = [], ""
    for i in range(50):
        try:
            made.append(create_key(Path(state_dir), f"k{i}", ["admin"])[0].id)
        except KeelError as exc:
            error = str(exc)
            break
    Path(out).write_text(json.dumps([made, error[:1000]]))  # under the limit


def test_a_key_file_write_that_fails_keeps_the_old_file_and_says_why(tmp_path: Path) -> None:
    """A disk that fills (here: a file size limit) must not leave a truncated keys.json, losing every key."""
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_create_until_the_file_limit, args=(str(tmp_path / "state"), str(tmp_path / "out.json")))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    made, error = json.loads((tmp_path / "out.json").read_text())
    assert len(made) >= 2 and "keys.json" in error and "could not" in error
    assert [r.id for r in list_keys(tmp_path / "state")] == made  # the file before the failed write
    assert [f.name for f in (tmp_path / "state").iterdir() if f.suffix == ".tmp"] == []
