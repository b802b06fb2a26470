"""Run the real ``lm_eval`` command (the console script of this environment) in a subprocess, offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LM_EVAL = str(Path(sys.executable).parent / "lm_eval")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(args: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``lm_eval *args``; the exit status is the caller's to check."""
    return subprocess.run([LM_EVAL, *args], capture_output=True, text=True, env=env or {**os.environ, **OFFLINE},
                          timeout=timeout)


def results(model: str, model_args: str, tasks: str, out: Path, *extra: str, metadata: dict | None = None) -> dict:
    """``lm_eval --model ... --output_path out``, which must succeed; returns its results JSON."""
    args = ["--model", model, "--model_args", model_args, "--tasks", tasks, "--output_path", str(out), *extra]
    if metadata is not None:
        args += ["--metadata", json.dumps(metadata)]
    done = run(args)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(Path(out).rglob("results_*.json")).read_text())
