"""The user's terminal: timestamped lines, tables and the live run display.

Owns how the testbed's output looks: ``rich`` when stdout is a terminal and
``rich`` imports, plain text otherwise (CI, pipes, files, TERM=dumb,
``TTNET_CONSOLE=plain``). The same calls work either way:

- :func:`say` -- one timestamped progress line;
- :func:`print_table` -- a :class:`testbed.analysis.stats.Table`;
- :func:`live_progress` -- a monitor for ``run_emulation(monitor=...)``: a
  live table on a terminal, one line every ~10 s otherwise.

Must never: compute anything it shows (tables arrive as data from
``testbed.analysis``, snapshots from ``testbed.emulate.progress``), write
files, or be imported by a layer below ``testbed.cli``. Only the
terminal's look depends on ``rich``; nothing breaks without it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

if TYPE_CHECKING:  # data types only: this module works on their fields
    from testbed.analysis.stats import Table
    from testbed.emulate.progress import RunProgress

#: Without a terminal, the live display prints one line this often.
PLAIN_EVERY_S = 10.0
#: Without a terminal, runs with more flows than this get totals, not a list.
PLAIN_MAX_FLOWS = 4
#: The live table shows at most this many flows (then "... N more").
LIVE_MAX_ROWS = 20


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:  # pragma: no cover - rich is in the testbed extras
        return False
    return True


class Terminal:
    """Where output goes and how it looks.

    ``Terminal()`` follows ``sys.stdout`` (looked up at each call, so
    redirections and test captures apply) and uses rich only when it is a
    terminal. ``Terminal(file=f)`` writes plain text to ``f``;
    ``Terminal(console=c)`` renders with the given ``rich.console.Console``
    (tests pass one writing to a StringIO with ``force_terminal=True``).
    ``clock`` (monotonic seconds) paces the plain progress lines."""

    def __init__(self, file: TextIO | None = None, console: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._file = file
        self._console = console
        self.clock = clock

    @property
    def file(self) -> TextIO:
        return self._file if self._file is not None else sys.stdout

    def use_rich(self) -> bool:
        """Render with rich: a console was given, or stdout is a terminal
        (not TERM=dumb, not TTNET_CONSOLE=plain) and rich imports."""
        if self._console is not None:
            return True
        if self._file is not None or os.environ.get("TTNET_CONSOLE") == "plain":
            return False
        if os.environ.get("TERM") == "dumb":
            return False
        try:
            tty = self.file.isatty()
        except (AttributeError, ValueError):   # no isatty, or closed
            tty = False
        return tty and _rich_available()

    @property
    def console(self) -> Any:
        """The rich Console (made on first use; follows sys.stdout)."""
        if self._console is None:
            from rich.console import Console
            self._console = Console(highlight=False)
        return self._console

    # --- lines and tables ---------------------------------------------------

    def say(self, msg: str) -> None:
        """``HH:MM:SS msg``: one line of progress (the stamp dimmed on a terminal)."""
        stamp = time.strftime("%H:%M:%S")
        if self.use_rich():
            from rich.text import Text
            self.console.print(Text.assemble((stamp, "dim"), " ", msg))
        else:
            print(f"{stamp} {msg}", file=self.file, flush=True)

    def echo(self, text: str = "") -> None:
        """A line as it is (through rich on a terminal, so a live display stays intact)."""
        if self.use_rich():
            from rich.text import Text
            self.console.print(Text(text))
        else:
            print(text, file=self.file, flush=True)

    def print_table(self, table: "Table") -> None:
        """A Table: a rich table on a terminal, else its title (if any) and
        :meth:`Table.text`, exactly the plain-text table of the analysis."""
        if self.use_rich():
            self.console.print(rich_table(table))
            return
        text = table.text()
        print(f"{table.title}\n{text}" if table.title else text, file=self.file, flush=True)

    def live_progress(self, every_s: float = PLAIN_EVERY_S,
                      max_rows: int = LIVE_MAX_ROWS) -> "LiveProgress":
        """A monitor for ``run_emulation(..., monitor=...)``; see :class:`LiveProgress`."""
        return LiveProgress(self, every_s=every_s, max_rows=max_rows)


def rich_table(table: "Table") -> Any:
    """A :class:`testbed.analysis.stats.Table` as a ``rich.table.Table``
    (cells are text, never markup)."""
    from rich import box
    from rich.table import Table as RichTable
    from rich.text import Text
    out = RichTable(title=Text(table.title, style="bold") if table.title else None,
                    box=box.SIMPLE_HEAD, show_edge=False, header_style="bold",
                    title_justify="left")
    for header, align in zip(table.headers, table.alignments()):
        out.add_column(Text(header), justify=align)
    for row in table.rows:
        out.add_row(*(Text(cell) for cell in row))
    return out


# --- the live run display ---------------------------------------------------

def _secs(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f}s"


def plain_progress_line(p: "RunProgress", max_flows: int = PLAIN_MAX_FLOWS) -> str:
    """``[pair] 12s/45s: tokens 300/4000 sent 290 delivered; ...``; with
    more than ``max_flows`` flows, the totals instead of the list."""
    head = f"[{p.topology}] {'done ' if p.done else ''}{_secs(p.elapsed_s)}/{_secs(p.planned_s)}"
    if len(p.flows) <= max_flows:
        body = "; ".join(f"{f.name} {f.sent}/{f.planned} sent {f.delivered} delivered"
                         for f in p.flows) or "no flows"
    else:
        finished = sum(1 for f in p.flows if f.planned and f.sent >= f.planned)
        body = (f"{len(p.flows)} flows {p.sent}/{p.planned} sent {p.delivered} delivered, "
                f"{finished} done sending")
    if p.malformed:
        body += f" ({p.malformed} malformed lines)"
    return f"{head}: {body}"


def live_renderable(p: "RunProgress", max_rows: int = LIVE_MAX_ROWS) -> Any:
    """The live table: one row per flow (at most ``max_rows``), a total row,
    and elapsed / planned time in the title."""
    from rich import box
    from rich.progress_bar import ProgressBar
    from rich.table import Table as RichTable
    from rich.text import Text
    state = "done in" if p.done else "running"
    title = Text.assemble((f"[{p.topology}] ", "bold"),
                          f"{state} {_secs(p.elapsed_s)} / {_secs(p.planned_s)} planned")
    out = RichTable(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                    header_style="bold", show_footer=len(p.flows) > 1)
    totals = [f"{len(p.flows)} flows", "", f"{p.sent}/{p.planned}", str(p.delivered), ""]
    for header, footer, justify in zip(("flow", "link", "sent/planned", "delivered", ""),
                                       totals, ("left", "left", "right", "right", "left")):
        out.add_column(Text(header), footer=Text(footer), justify=justify)
    shown = p.flows if len(p.flows) <= max_rows else p.flows[:max(1, max_rows - 1)]
    for f in shown:
        out.add_row(Text(f.name), Text(f"{f.src}->{f.dst}"), f"{f.sent}/{f.planned}",
                    str(f.delivered), ProgressBar(total=max(1, f.planned), completed=f.sent,
                                                  width=20))
    if len(shown) < len(p.flows):
        out.add_row(Text(f"... {len(p.flows) - len(shown)} more", style="dim"), "", "", "", "")
    if p.malformed:
        out.caption = f"{p.malformed} malformed event lines skipped"
    return out


class LiveProgress:
    """``monitor(progress)`` for :func:`testbed.emulate.run.run_emulation`.

    On a rich terminal: a live table, redrawn at each snapshot, left on
    screen when the run is done. Otherwise: a line at the first snapshot,
    then at most one every ``every_s`` seconds, and one when done. It may
    serve several runs in turn (each ``done`` snapshot ends one display);
    use it as a context manager so an interrupted run's display is closed."""

    def __init__(self, terminal: Terminal, every_s: float = PLAIN_EVERY_S,
                 max_rows: int = LIVE_MAX_ROWS) -> None:
        self.terminal = terminal
        self.every_s = every_s
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._live: Any = None
        self._rich: bool | None = None    # chosen at a run's first snapshot
        self._last_line: float | None = None

    def __call__(self, progress: "RunProgress") -> None:
        with self._lock:
            if self._rich is None:
                self._rich = self.terminal.use_rich()
            if self._rich:
                self._update_live(progress)
            else:
                self._update_plain(progress)
            if progress.done:
                self._rich = None

    def _update_live(self, p: "RunProgress") -> None:
        renderable = live_renderable(p, self.max_rows)
        if self._live is None:
            from rich.live import Live
            self._live = Live(renderable, console=self.terminal.console, auto_refresh=False,
                              transient=False)
            self._live.start(refresh=True)
        else:
            self._live.update(renderable, refresh=True)
        if p.done:
            self._stop()

    def _update_plain(self, p: "RunProgress") -> None:
        now = self.terminal.clock()
        if p.done or self._last_line is None or now - self._last_line >= self.every_s:
            print(plain_progress_line(p), file=self.terminal.file, flush=True)
            self._last_line = None if p.done else now

    def _stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._rich = self._last_line = None

    def __enter__(self) -> "LiveProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the process's terminal ---------------------------------------------------

_terminal = Terminal()


def terminal() -> Terminal:
    """The terminal of this process (stdout)."""
    return _terminal


def say(msg: str) -> None:
    """A timestamped progress line on stdout; see :meth:`Terminal.say`."""
    _terminal.say(msg)


def echo(text: str = "") -> None:
    """A line on stdout as it is; see :meth:`Terminal.echo`."""
    _terminal.echo(text)


def print_table(table: "Table") -> None:
    """A table on stdout, rich or plain; see :meth:`Terminal.print_table`."""
    _terminal.print_table(table)


def live_progress(every_s: float = PLAIN_EVERY_S, max_rows: int = LIVE_MAX_ROWS) -> LiveProgress:
    """A monitor for ``run_emulation(monitor=...)`` on stdout; see :class:`LiveProgress`."""
    return _terminal.live_progress(every_s=every_s, max_rows=max_rows)
