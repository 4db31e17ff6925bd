"""Imported first by ``python -m seal_exp.train``, before the imports that take seconds (torch, MLflow,
Hydra's composition): from then on the cluster's pre-timeout signal is recorded instead of ending the
process (:func:`seal_exp.run.preemption.record_early`), however soon after the job's start it comes.

A SLURM job of a sweep imports the entry point as it loads its pickled task, so it is covered too.
"""

from seal_exp.run.preemption import record_early

record_early()
