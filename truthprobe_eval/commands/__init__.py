"""One module per ``truthprobe`` subcommand (discovered automatically by ``truthprobe_eval.cli``)."""
