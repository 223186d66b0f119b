"""Commands run in a child process with a time and memory limit, so a test can tell a clean
refusal from a crash (a signal), a hang (the time limit) or a runaway allocation.

Children fork from a forkserver that imported the command line once (a fresh `python` per
case would spend seconds importing torch); the server never runs torch, so forking it is safe.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
import traceback
from dataclasses import dataclass

PRELOAD = ["cli", "heads.commands", "heads.saving", "heads.predict", "cache.store", "sklearn.ensemble",
           "sklearn.neighbors", "sklearn.svm", "lightgbm", "skops.io", "safetensors.torch"]


@dataclass
class Outcome:
    exit_code: int | None  # None: killed by a signal or the time limit
    output: str
    signal: int | None = None
    hung: bool = False

    @property
    def clean(self) -> bool:
        """Exit 0, or a refusal of one message line: no signal, no hang, no traceback."""
        if self.signal or self.hung or self.exit_code is None or "Traceback" in self.output:
            return False
        errors = [line for line in self.output.splitlines() if line.startswith("Error:")]
        return self.exit_code == 0 or (self.exit_code != 0 and len(errors) == 1)


def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(args, conn, memory: int, env: dict):
    os.environ.update(env)
    limit = _vm_bytes() + memory  # on top of what the imported libraries already mapped
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(1)
    from click.testing import CliRunner

    import cli

    try:
        result = CliRunner().invoke(cli.main, [str(a) for a in args])
        output = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            output += "\nTraceback (in the child):\n" + "".join(
                traceback.format_exception(result.exception))
        conn.send((result.exit_code, output))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as a traceback
        conn.send((1, "Traceback (harness):\n" + "".join(traceback.format_exception(exc))))


class Isolated:
    def __init__(self):
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def run(self, *args, timeout: float = 60, memory: int = 3 << 30, env: dict | None = None) -> Outcome:
        return self.run_many([args], timeout, memory, env)[0]

    def run_many(self, cases: list, timeout: float = 60, memory: int = 3 << 30,
                 env: dict | None = None, workers: int = 1) -> list[Outcome]:
        """Outcomes of several commands (lists of arguments), `workers` at a time."""
        outcomes: list = [None] * len(cases)
        waiting, running = list(enumerate(cases)), []
        while waiting or running:
            while waiting and len(running) < workers:
                number, args = waiting.pop(0)
                receive, send = self.ctx.Pipe(duplex=False)
                child = self.ctx.Process(target=_child, args=(list(args), send, memory, env or {}))
                child.start()
                send.close()
                running.append((number, child, receive, time.monotonic()))
            for item in list(running):
                number, child, receive, started = item
                outcome = _collect(child, receive, started, timeout)
                if outcome is not None:
                    outcomes[number] = outcome
                    running.remove(item)
            time.sleep(0.01)
        return outcomes


def _collect(child, receive, started: float, timeout: float) -> Outcome | None:
    """The child's outcome once it has one; None while it is still working."""
    if receive.poll():
        try:
            exit_code, output = receive.recv()
        except EOFError:  # died without a word: a signal
            child.join()
            receive.close()
            return Outcome(None, "", signal=-child.exitcode if child.exitcode else None)
        child.join(30)
        receive.close()
        return Outcome(exit_code, output)
    if time.monotonic() - started > timeout:
        child.kill()
        child.join()
        receive.close()
        return Outcome(None, "", hung=True)
    return None
