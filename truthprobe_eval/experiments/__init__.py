"""Experiments: what runs models over benchmarks (the drivers). ``truthprobe_eval.analysis`` reads result files.

- ``main_job``: ``truthprobe run``, the TruthProbe paper's protocol end to end (probe, choose on validation rows,
  test held out, significance);
- ``halueval_judge``: the HaluEval judge evaluation on one loaded model, shared by the main job, the ablations
  and the method comparison;
- ``method_comparison`` with ``truthfulqa_mc`` and ``neutral_text``: ``truthprobe compare-methods``;
- ``ablations``: grids and random controls through the harness (``truthprobe ablate``);
- ``overlay``: attention overlays on images (``truthprobe overlay``), which runs the model.
"""
