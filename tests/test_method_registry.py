"""A method is one module: a toy method written in one file outside this package, announced through the
``truthprobe_eval.methods`` entry-point group, reaches every driver with no edit anywhere else: the registry,
``compare-methods`` (its runs, controls and labels), ``truthprobe fit``, ``truthprobe bake``, the leaderboard's
rows, the real ``lm_eval`` CLI (a fresh process that finds it through the entry point) and VLMEvalKit's gated
model."""
from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch
from tiny_models import save_tiny, save_tiny_mllm, write_synthetic_coco

TOY = '''
"""A toy method: scale every head's output by ``factor``; its artifact is a JSON file holding a default factor."""
import json
from pathlib import Path

from truthprobe_eval.interventions import FitData, Intervention, Param, register


@register
class ToySteer(Intervention):
    name = "toy_steer"
    title = "toy steering"
    rank = 99
    controls = {"half": {"half": True}}
    control_titles = {"half": "toy steering at half strength"}
    ablations = {"double": ("toy steering, doubled (an ablation)", {"factor": 2.0})}
    artifact, artifact_stem, fit_data = "weights", "toy", "halueval"
    fit_params = (Param("rows", int, 3, help="rows read"),)
    params = (Param("weights", "path", None), Param("factor", float, 0.5), Param("half", bool, False),
              Param("seed", int, 0))

    @classmethod
    def fit(cls, model, tokenizer, data: FitData, rows: int = 3) -> str:
        path = data.path(cls.artifact_stem)
        path.write_text(json.dumps({"rows": rows, "scale": 0.9}))
        return str(path)

    def load(self):
        self.scale = json.loads(Path(self.settings["weights"]).read_text())["scale"] if self.settings["weights"] else 1.0

    def factor(self) -> float:
        f = self.settings["factor"] * self.scale
        return f / 2 if self.settings["half"] else f

    def hooks(self, model):
        from truthprobe_eval.architectures import locate_heads

        f = self.factor()
        return [p.register_forward_pre_hook(lambda _m, a: (a[0] * f, *a[1:])) for p in locate_heads(model).out_projs]

    def bake_weights(self, sites):
        for proj in sites.out_projs:
            proj.weight.mul_(self.factor())
        return None
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy method's one file, and a distribution record announcing it, on the path of this process and of the
    processes it starts; registered here through ``discover()`` (as a fresh process does at import)."""
    from truthprobe_eval.interventions import REGISTRY, discover

    root = tmp_path_factory.mktemp("toy_method")
    (root / "toy_steer.py").write_text(textwrap.dedent(TOY))
    info = root / "toy_steer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-steer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[truthprobe_eval.methods]\ntoy_steer = toy_steer\n")
    sys.path.insert(0, str(root))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *([old] if old else [])])
    try:
        assert "toy_steer" not in REGISTRY
        discover()
        yield root
    finally:
        REGISTRY.pop("toy_steer", None)
        sys.path.remove(str(root))
        sys.modules.pop("toy_steer", None)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def test_the_registry_and_the_comparison_find_it(toy, tmp_path):
    from truthprobe_eval.experiments.method_comparison import ComparisonConfig, _interventions, run_labels
    from truthprobe_eval.interventions import methods

    assert list(methods())[-1] == "toy_steer"
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"scale": 0.9}))
    cfg = ComparisonConfig(methods=("toy_steer",), settings={"toy_steer": {"factor": "0.8", "rows": "2"}},
                           halueval_offset=5)
    cfg.check()
    with pytest.raises(Exception, match="inside the rows 0-1 that toy steering's fit reads"):
        ComparisonConfig(methods=("toy_steer",), settings={"toy_steer": {"rows": "2"}}, halueval_offset=1).check()
    runs = _interventions(cfg, {"toy_steer": [str(weights)] * 2}, {"toy_steer": {"factor": 0.8}})
    assert list(runs) == ["baseline", "toy_steer", "toy_steer_half", "toy_steer_double"]
    assert runs["toy_steer_half"][0].factor() == pytest.approx(0.36) and runs["toy_steer_double"][0].factor() == 1.8
    labels = run_labels()
    assert labels["toy_steer_half"] == "toy steering at half strength"
    assert labels["toy_steer_double"] == "toy steering, doubled (an ablation)"


def test_fit_and_bake_commands_find_it(toy, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from truthprobe_eval.cli import main
    from truthprobe_eval.interventions import build

    model_dir = save_tiny("llama", tmp_path / "llama")
    out = tmp_path / "toy.json"
    assert main(["fit", "toy_steer", "--model", model_dir, "--out", str(out), "--set", "rows=7", "--quiet"]) == 0
    assert json.loads(out.read_text()) == {"rows": 7, "scale": 0.9}
    assert main(["fit", "toy_steer", "--model", model_dir, "--out", str(out), "--set", "factor=2"]) == 2
    assert "factor are settings of the intervention, not of its fit" in capsys.readouterr().err
    baked_dir = tmp_path / "baked"
    assert main(["bake", "--method", "toy_steer", "--model", model_dir, "--set", f"weights={out}",
                 "--set", "factor=0.5", "--out", str(baked_dir)]) == 0
    baked = AutoModelForCausalLM.from_pretrained(baked_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[5, 9, 14, 3]])
    with torch.no_grad(), build("toy_steer", weights=str(out), factor=0.5).attach(plain):
        hooked = plain(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(baked(input_ids=ids).logits, hooked, atol=1e-5)
    assert baked.config.truthprobe_interventions[-1]["method"] == "toy_steer"


def test_leaderboard_rows_name_it(toy, tmp_path):
    from truthprobe_eval.analysis.leaderboard import method_from_description
    from truthprobe_eval.interventions import build

    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"scale": 1.0}))
    described = build("toy_steer", weights=str(weights), factor=0.3).describe()
    method, settings = method_from_description(described, "m")
    assert method == "toy steering" and "factor=0.3" in settings


@pytest.mark.slow
def test_the_lm_eval_cli_in_a_fresh_process_finds_it_through_the_entry_point(toy, tmp_path, shared_dir, monkeypatch):
    from lm_eval_cli import results

    monkeypatch.setenv("TRUTHPROBE_TRUTHFULQA_CSV", str(shared_dir / "data" / "truthfulqa" / "TruthfulQA.csv"))
    model_dir = "smollm2-135m-instruct"
    plain = results("truthgated", f"pretrained={model_dir},method=none", "truthfulqa_local_mc1", tmp_path / "a",
                    "--limit", "3", "--log_samples")
    toy_run = results("truthgated", f"pretrained={model_dir},method=toy_steer,factor=0.2", "truthfulqa_local_mc1",
                      tmp_path / "b", "--limit", "3", "--log_samples")
    assert toy_run["config"]["intervention"]["method"] == "toy_steer"
    a = [json.loads(line) for f in (tmp_path / "a").rglob("samples_*.jsonl") for line in f.read_text().splitlines()]
    b = [json.loads(line) for f in (tmp_path / "b").rglob("samples_*.jsonl") for line in f.read_text().splitlines()]
    assert [s["resps"] for s in a] != [s["resps"] for s in b]  # the edit changes log-likelihoods


def test_vlmevalkit_gated_model_takes_it(toy, tmp_path):
    from truthprobe_eval.model_adapters.vlmeval_gated import TruthGatedVLM

    llava = save_tiny_mllm("llava", tmp_path / "llava")
    image_dir, _ = write_synthetic_coco(tmp_path / "coco", {1: ["dog"]})
    image = str(next(image_dir.iterdir()))
    message = [dict(type="image", value=image), dict(type="text", value="Is there a dog in the image?")]
    plain = TruthGatedVLM(model_path=llava, method="none", max_new_tokens=5)
    steered = TruthGatedVLM(model_path=llava, method="toy_steer", factor=0.0, max_new_tokens=5)
    assert steered.intervention.name == "toy_steer"
    assert plain.generate(message) != steered.generate(message)  # every head silenced
