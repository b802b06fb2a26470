"""Analyses that work from files: score files, checkpoints, harness result folders.

One module per analysis (``compare``, ``significance``, ``drift``, ``leaderboard``, ``align``, ``overlay``);
``reports`` holds the shared Markdown / CSV / PNG writers. Import the module you need; nothing heavy is
imported here.
"""
