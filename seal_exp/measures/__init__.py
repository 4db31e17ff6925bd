"""What a trained network costs and how it holds up beyond top-1 accuracy: activity and energy
(``activity``), accuracy at other timesteps (``timesteps``), adversarial robustness (``attacks``); run
together on a finished run's selected student by ``evaluation`` (after training, and by
``python -m seal_exp.evaluate``)."""
