"""Worker processes seen from the harness: start one per job, follow its phases, turn
whatever happens (a Result, an exception, a death, a hang) into a Result, and, for
interleaved latency rounds, keep a finished worker parked and ask it for more rounds.

The worker's stdout carries one JSON message per line: {"phase": ...} for the progress
display, and {"parked": true}, {"not_parked": why}, {"round_done": n} or
{"round_failed": why} for rounds.  The Result itself is RESULT.json, rewritten by the
worker after every round."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Job:
    model: str
    device: str
    variant: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.variant, self.device)

    @property
    def group(self) -> tuple[str, str]:
        """Jobs of one group are the variants interleaved latency rounds visit in turn."""
        return (self.model, self.device)

    @property
    def label(self) -> str:
        return f"{self.model} · {self.variant} · {self.device}"


class _Process:
    """One worker process and the messages it has printed."""

    def __init__(self, payload: dict, scratch: Path, on_phase: Callable[[str], None],
                 keep_stdin: bool) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self.scratch = scratch
        job_file, self.out_file = scratch / "job.json", scratch / "result.json"
        self.err_file = scratch / "stderr.txt"
        self.out_file.unlink(missing_ok=True)
        job_file.write_text(json.dumps(payload))
        self.phase = "start"
        self.messages: queue.Queue = queue.Queue()
        self._on_phase = on_phase
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.err_file, "w") as err:
            # own session: a terminal's Ctrl-C reaches the harness, which stops the child
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpteval.worker", str(job_file), str(self.out_file)],
                stdin=subprocess.PIPE if keep_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(msg, dict):
                continue
            if "phase" in msg:
                self.phase = msg["phase"]
                self._on_phase(self.phase)
            else:
                self.messages.put(msg)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_message(self, keys: tuple[str, ...], timeout_s: float,
                     stopped: Callable[[], bool]) -> tuple[str, dict | None]:
        """Wait for a message holding one of `keys`: ("message", msg), or ("exited", None)
        when the process ends, ("timeout", None) or ("stopped", None)."""
        t0 = time.monotonic()
        while True:
            try:
                msg = self.messages.get(timeout=0.05)
                if any(k in msg for k in keys):
                    return "message", msg
                continue
            except queue.Empty:
                pass
            if stopped():
                return "stopped", None
            if not self.alive() and self.messages.empty():
                self._reader.join(timeout=2)
                if self.messages.empty():
                    return "exited", None
            elif time.monotonic() - t0 > timeout_s:
                return "timeout", None

    def end(self, kill: bool) -> int:
        """End the process and return its exit status: kill it at once (hung, or the run
        was stopped), or close its stdin, which ends a parked worker, and wait (30 s, then
        kill)."""
        if kill:
            self.kill()
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            return self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.kill()
            return self.proc.wait()

    def read_result(self) -> dict | None:
        if self.out_file.is_file():
            try:
                return json.loads(self.out_file.read_text())
            except json.JSONDecodeError:
                return None
        return None


class Parked:
    """A worker that delivered its Result and stays loaded for more latency rounds."""

    def __init__(self, job: Job, process: _Process, runner: JobRunner) -> None:
        self.job, self.process, self.runner = job, process, runner
        self.scratch = process.scratch

    def round(self, timeout_s: float) -> tuple[dict | None, str | None]:
        """One more latency round: (the updated Result, None), or (None, why not) when the
        worker failed the round, died, hung (killed) or the run was stopped; the earlier
        Result stands then and the worker is gone."""
        p = self.process
        try:
            assert p.proc.stdin is not None
            p.proc.stdin.write("round\n")
            p.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None, "the parked worker had exited"
        how, msg = p.wait_message(("round_done", "round_failed"), timeout_s,
                                  lambda: self.runner.stop_requested)
        if how == "message" and "round_done" in msg:
            return p.read_result(), None
        # hung, or the run was stopped: waiting for it to exit would hang too
        self.runner.end(p, kill=how != "message")
        if how == "message":
            return p.read_result(), None  # the worker recorded why in latency_rounds_note
        if how == "timeout":
            return None, f"a later latency round timed out after {timeout_s:g} s"
        if how == "exited":
            return None, _death_reason(p.proc.returncode, "a latency round", p.err_file)
        return None, None  # stopped: nothing to record

    def close(self) -> None:
        self.runner.end(self.process, kill=False)


class JobRunner:
    """Runs one job in a child process and turns whatever happens into a Result."""

    def __init__(self, on_phase: Callable[[str], None] | None = None) -> None:
        self.on_phase = on_phase or (lambda phase: None)
        self.live: set[_Process] = set()
        self.stop_requested = False

    def stop(self) -> None:
        """Interrupt: kill the job in progress and every parked worker; record nothing for
        the job in progress."""
        self.stop_requested = True
        for p in list(self.live):
            p.kill()

    def end(self, p: _Process, kill: bool) -> int:
        """End one of this runner's processes (see _Process.end); it is no longer live."""
        rc = p.end(kill)
        self.live.discard(p)
        return rc

    def run(self, job: Job, payload: dict, scratch: Path, timeout_s: float,
            park: bool = False) -> tuple[dict | None, Parked | None]:
        """(Result, None) once the worker has ended, or (Result, Parked) when `park` asked
        the worker to stay for latency rounds and it did; (None, None) when interrupted."""
        p = _Process(payload, scratch, self.on_phase, keep_stdin=park)
        self.live.add(p)
        base = {"model": job.model, "variant": job.variant, "device": job.device, "metrics": {}}
        how, msg = p.wait_message(("parked", "not_parked"), timeout_s,
                                  lambda: self.stop_requested)
        if how == "message" and "parked" in msg:
            return p.read_result() or {**base, "status": "failed",
                                       "reason": "parked without a result"}, Parked(job, p, self)
        rc = self.end(p, kill=how in ("timeout", "stopped"))
        if how == "stopped":
            return None, None  # interrupted: the job is not finished and is not recorded
        if how == "timeout":
            return {**base, "status": "failed", "reason": f"timed out after {timeout_s:g} s "
                    f"(phase: {p.phase}); raise timeout_s or --timeout if this variant is slow"}, None
        return p.read_result() or {**base, "status": "failed",
                                   "reason": _death_reason(rc, p.phase, p.err_file)}, None


def _death_reason(rc: int, phase: str, err_file: Path) -> str:
    tail = ""
    try:
        lines = [ln for ln in err_file.read_text(errors="replace").splitlines() if ln.strip()]
        tail = lines[-1][:300] if lines else ""
    except OSError:
        pass
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        what = f"process killed by {name}{hint} during {phase}"
    else:
        what = f"process exited with status {rc} during {phase} without a result"
    return f"{what}{': ' + tail if tail else ''}"
