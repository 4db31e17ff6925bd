"""submitit's local launcher, with every job waited for (:mod:`.waiting`): a job that ends without a
result is a line of the sweep's table, not a traceback. ``conf/hydra/launcher/local.yaml`` selects it."""

from __future__ import annotations

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as SubmititLocalLauncher

from hydra_plugins.seal_exp_launcher.waiting import WaitingLauncher


class LocalLauncher(WaitingLauncher, SubmititLocalLauncher):
    pass
