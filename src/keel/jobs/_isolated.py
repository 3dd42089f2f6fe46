"""Running one attempt of a task in its own process, killed when it outlasts its timeout.

The process is started with multiprocessing's ``spawn`` context (a fresh interpreter: no locks or
threads inherited from the scheduler), so the task's ``run`` and its arguments must pickle: a
module-level function, or a ``functools.partial`` of one. The timeout counts from the moment the
child reports it is about to call ``run``, so a slow interpreter start is not charged to the task.
A job commits its output once, at its end, so a run killed before that leaves its table as it was.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

from keel.errors import ConfigError, KeelError

_STARTED = "started"


class IsolatedFailure(KeelError):
    """A failure of an isolated attempt whose message is the run's error as it stands."""


class TaskTimeout(IsolatedFailure):
    """The attempt ran past its timeout and its process was killed."""


class TaskProcessDied(IsolatedFailure):
    """The attempt's process ended without reporting an outcome (killed, or it crashed the interpreter)."""


class RemoteTaskError(IsolatedFailure):
    """A task's exception that could not cross the pipe: ``"<ExceptionType>: <message>"``."""


def call_isolated(name: str, run: Callable[[datetime], object], logical_date: datetime, timeout: float,
                  log_file: Path | None = None) -> None:
    """Call ``run(logical_date)`` in a child process; raise what it raised, or `TaskTimeout`.

    With `log_file`, the child's stdout, stderr and log records are appended to it.

    An exception the task raises is re-raised here as itself (its type name survives for the run's
    error); one that cannot be pickled arrives as a `RemoteTaskError` holding its name and message.
    """
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(run, logical_date, send, log_file), name=f"keel-task-{name}", daemon=True)
    try:
        process.start()
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"task {name!r} has a timeout, so it runs in its own process, and its run cannot be sent there "
            f"({exc}); make it a module-level function or a functools.partial of one"
        ) from exc
    finally:
        send.close()
    try:
        if _receive(receive, None) != _STARTED:
            raise TaskProcessDied(f"the process of task {name!r} ended before calling it (exit code "
                                  f"{_exit_code(process)})")
        if not receive.poll(timeout):
            process.kill()
            raise TaskTimeout(f"timed out after {timeout:g} s")
        outcome = _receive(receive, 0)
        if outcome is None:
            raise TaskProcessDied(f"the process of task {name!r} ended without an outcome (exit code "
                                  f"{_exit_code(process)})")
        if isinstance(outcome, BaseException):
            raise outcome
    except BaseException:
        process.kill()  # an interrupt while waiting must not leave the run going on in its process
        raise
    finally:
        receive.close()
        process.join()


def _receive(connection: Connection, timeout: float | None) -> object:
    """The next message, or None once the child's end is closed (it exited)."""
    try:
        if timeout is not None and not connection.poll(timeout):
            return None
        return connection.recv()
    except EOFError:
        return None


def _exit_code(process: multiprocessing.process.BaseProcess) -> int | None:
    process.join(5)
    return process.exitcode


def _child(run: Callable[[datetime], object], logical_date: datetime, send: Connection,
           log_file: Path | None) -> None:
    if log_file is not None:
        from keel.jobs.runlog import redirect_process

        redirect_process(log_file)
    send.send(_STARTED)
    try:
        run(logical_date)
    except Exception as exc:
        send.send(exc if _round_trips(exc) else RemoteTaskError(f"{type(exc).__name__}: {exc}"))
    else:
        send.send(True)
    finally:
        send.close()


def _round_trips(exc: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # any failure means: send it as text
        return False
    return True
