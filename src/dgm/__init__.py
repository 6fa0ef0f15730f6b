"""dgm: deep generative models trained with DVC, Ray and MLflow."""

__version__ = "0.1.0"
