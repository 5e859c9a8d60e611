"""The live display of a run: which variant, which phase, how long (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class RunProgress:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("[cyan]{task.fields[phase]}"), TimeElapsedColumn(),
            console=self.console, transient=False)
        self._task = None
        self._label = ""

    def start(self, total: int, done: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("starting", total=total, completed=done, phase="")

    def begin(self, label: str) -> None:
        self._label = label
        self._progress.update(self._task, description=label, phase="start")

    def phase(self, phase: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, phase=phase)

    def end(self, label: str, result: dict) -> None:
        status = result.get("status")
        style = {"ok": "green", "skipped": "yellow", "failed": "red"}.get(status, "white")
        note = f" — {result.get('reason')}" if result.get("reason") else ""
        # escaped: a reason like "pip install 'gpteval[onnx]'" is not markup
        self._progress.console.print(f"[{style}]{status:>7}[/] {escape(label + note)}")
        self._progress.advance(self._task)

    def stop(self) -> None:
        self._progress.stop()
