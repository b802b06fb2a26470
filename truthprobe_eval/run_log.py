"""A job's screen is a report, not a log: library output goes to ``<out>/run.log``, the job speaks in stage lines.

Inside ``run_log(path)`` everything that lm-eval, transformers, datasets, torch and Python's warnings print (on
``sys.stdout``, ``sys.stderr``, logging handlers and tqdm bars) is written to ``path``; the job writes its own
lines with ``say`` (screen and file), ``detail`` (file only; on the screen too with ``verbose``) and shows one
progress bar per stage with ``bar``. With ``verbose=True`` nothing is hidden: the library output goes to the
screen as well as to the file.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


class _Tee:
    """A text stream writing to several streams (the log file, and the screen when verbose)."""

    def __init__(self, *streams: IO[str]) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """A library closing its handler's stream at exit (absl does) must not close the screen or the log."""

    @property
    def encoding(self) -> str:
        return "utf-8"


class RunLog:
    """What a job says: ``say`` (the screen and the file), ``detail`` (the file; the screen when verbose), ``bar``."""

    def __init__(self, file: IO[str], screen: IO[str], screen_err: IO[str], verbose: bool, progress: bool) -> None:
        self.file, self.screen, self.screen_err = file, screen, screen_err
        self.verbose, self.progress = verbose, progress

    def say(self, text: str) -> None:
        print(text, file=self.screen, flush=True)
        print(text, file=self.file, flush=True)

    def detail(self, text: str) -> None:
        print(text, file=self.file, flush=True)
        if self.verbose:
            print(text, file=self.screen, flush=True)

    __call__ = detail  # a RunLog is the ``log`` callable the experiments take

    def bar(self, total: int, desc: str, unit: str = "row") -> Any:
        """One progress bar for a whole stage, on the screen (not in the file)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=self.screen_err, leave=False,
                    disable=not self.progress or self.verbose, dynamic_ncols=True)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    return [h for lg in loggers for h in getattr(lg, "handlers", [])
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and not isinstance(getattr(type(h), "stream", None), property)]  # those follow sys.stderr by themselves


def _library_bars(enable: bool) -> bool:
    """Turn transformers' own progress bars (weight loading) on or off; returns whether they were on."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return enable
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enable else hf_logging.disable_progress_bar)()
    return was


@contextmanager
def run_log(path: "str | os.PathLike", verbose: bool = False, progress: bool = True,
            bars_on_screen: bool = False) -> Iterator[RunLog]:
    """Send the libraries' output to ``path`` (appended) for the block; yields the job's ``RunLog``.

    ``bars_on_screen``: leave ``sys.stderr`` alone, so the job's own progress bars (extraction, probes) stay on the
    screen; logging, warnings, printed output and transformers' weight-loading bar still go to the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    screen, screen_err = sys.stdout, sys.stderr
    with open(path, "a", encoding="utf-8", buffering=1) as file:
        out = _Tee(file, screen) if verbose else _Tee(file)
        err = _Tee(file, screen_err) if verbose else _Tee(file)
        screens = (screen, screen_err, sys.__stdout__, sys.__stderr__)
        handlers = [h for h in _stream_handlers() if h.stream in screens]   # those that print to the screen
        streams = [h.stream for h in handlers]
        for h in handlers:
            h.setStream(err)
        last_resort, logging.lastResort = logging.lastResort, logging.StreamHandler(err)
        sys.stdout = out
        if not bars_on_screen:
            sys.stderr = err
        hf_bars = _library_bars(enable=False) if bars_on_screen and not verbose else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: print(
                    warnings.formatwarning(message, category, filename, lineno, line), end="", file=err)
                yield RunLog(file, screen, screen_err, verbose, progress)
        finally:
            sys.stdout, sys.stderr = screen, screen_err
            if hf_bars is not None:
                _library_bars(enable=hf_bars)
            logging.lastResort = last_resort
            for h, s in zip(handlers, streams):
                h.setStream(s)
            for h in _stream_handlers():   # handlers made inside the block (a library imported there)
                if h.stream in (out, err):
                    h.setStream(screen_err)


__all__ = ["RunLog", "run_log"]
