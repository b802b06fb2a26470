"""truthprobe_eval.model_adapters"""
