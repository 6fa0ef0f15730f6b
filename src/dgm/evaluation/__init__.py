"""The in-domain evaluator classifier and the metrics computed in its feature space."""
