"""Hyperparameter search with Ray Tune: each trial a Ray Train run scored by the evaluator."""
