"""Generative model families; each owns its networks, optimizers, ``train_step`` and sampler."""
