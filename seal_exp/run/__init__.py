"""A job's lifecycle: identity, skip/resume and ``last.pt``, checkpoints, signals, processes, tracking."""
