"""HaluEval QA judge tasks for lm-eval (YAML configs + utils)."""
