"""Models-from-code entry for MLflow: the dgm generator as a pyfunc."""

import mlflow
from mlflow.pyfunc import PythonModel


class GeneratorModel(PythonModel):
    """Samples uint8 (N, H, W, C) images from a dgm generator."""

    # The signature (with its params) is declared explicitly when logging; MLflow's
    # type-hint inference cannot express the image tensor, so it is not asked to try.
    _skip_type_hint_validation = True

    def load_context(self, context):
        import torch

        from dgm.models.generator import load_generator

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.generator = load_generator(context.artifacts["generator"], device=device)

    def predict(self, context, model_input, params=None):
        from dgm.models.generator import sample_uint8
        from dgm.tracking.pyfunc import request_args, request_label, request_latents

        latents, labels = request_latents(model_input)
        if latents is not None:
            return sample_uint8(self.generator, len(latents), 0, labels, latents)
        num_samples, seed = request_args(model_input, params)
        label = request_label(model_input, params)
        return sample_uint8(self.generator, num_samples, seed,
                            None if label is None else [label])


mlflow.models.set_model(GeneratorModel())
