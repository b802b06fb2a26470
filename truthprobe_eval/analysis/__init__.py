"""Analyses that work from files: score files, checkpoints, harness result folders.

One module per analysis (``compare``, ``significance``, ``drift``, ``leaderboard``, ``align``); what runs models
(the main job, ablations, the method comparison, overlays) lives in ``truthprobe_eval.experiments``.
``reports`` holds the shared Markdown / CSV / PNG writers. Import the module you need; nothing heavy is
imported here.
"""
