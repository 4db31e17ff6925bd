"""The training loop, which knows no method: settings, epochs, evaluation, optimisers and schedules."""
