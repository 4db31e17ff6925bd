"""What runs leave behind and what sweeps add up to: per-run files, sweep reports, comparisons, status."""
