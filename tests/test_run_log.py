"""The job's screen is a report: library output (prints, logging, warnings, tqdm) goes to run.log, the job's own
lines to both; --verbose shows everything live."""
from __future__ import annotations

import logging
import warnings

from tqdm.auto import tqdm

from truthprobe_eval.run_log import run_log


def _library_noise() -> None:
    print("a library prints")
    logging.getLogger("lm-eval-like").warning("a library logs")
    warnings.warn("a library warns", UserWarning)
    for _ in tqdm(range(3), desc="a library's bar"):
        pass


def test_library_output_goes_to_the_file_only(tmp_path, capsys):
    handler = logging.StreamHandler()          # made before the run, as lm-eval's is at import
    logging.getLogger("lm-eval-like").addHandler(handler)
    try:
        with run_log(tmp_path / "run.log", progress=False) as log:
            _library_noise()
            log.say("[stage] one line")
            log.detail("a detail")
        screen = capsys.readouterr()
        assert screen.out == "[stage] one line\n" and screen.err == ""
        text = (tmp_path / "run.log").read_text()
        for line in ("a library prints", "a library logs", "UserWarning: a library warns", "a library's bar",
                     "[stage] one line", "a detail"):
            assert line in text
        logging.getLogger("lm-eval-like").warning("after the run")   # the handler writes to the screen again
        assert "after the run" in capsys.readouterr().err
    finally:
        logging.getLogger("lm-eval-like").removeHandler(handler)


def test_verbose_shows_everything_and_still_writes_the_file(tmp_path, capsys):
    with run_log(tmp_path / "run.log", verbose=True, progress=False) as log:
        _library_noise()
        log.detail("a detail")
    screen = capsys.readouterr()
    assert "a library prints" in screen.out and "a detail" in screen.out
    assert "a library warns" in screen.err
    assert "a library prints" in (tmp_path / "run.log").read_text()


def test_a_handler_made_inside_the_run_is_restored_after_it(tmp_path, capsys):
    with run_log(tmp_path / "run.log", progress=False):
        inner = logging.StreamHandler()         # a library imported during the run
        logging.getLogger("imported-late").addHandler(inner)
        logging.getLogger("imported-late").warning("inside")
    try:
        logging.getLogger("imported-late").warning("outside")
        assert "outside" in capsys.readouterr().err
        assert "inside" in (tmp_path / "run.log").read_text()
    finally:
        logging.getLogger("imported-late").removeHandler(inner)


def test_a_library_closing_its_stream_at_exit_closes_nothing(tmp_path, capsys):
    """absl's handler, made during the run, closes its stream at interpreter exit: that must be harmless."""
    with run_log(tmp_path / "run.log", progress=False):
        inner = logging.StreamHandler()
    inner.stream.close()    # what logging.shutdown() does to the handlers still holding the run's stream
    inner.close()
    print("still writable")
    assert "still writable" in capsys.readouterr().out
