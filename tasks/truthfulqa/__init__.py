"""TruthfulQA tasks for lm-eval reading a local TruthfulQA.csv (YAML configs + utils)."""
