"""truthprobe_eval.probing"""
