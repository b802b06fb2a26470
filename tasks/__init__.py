"""truthprobe_eval.tasks"""
