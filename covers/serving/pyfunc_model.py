"""MLflow "models from code" entry point of a promoted model: no pickled objects, weights load weights_only.

MLflow runs this file when it loads the model; nothing in ``covers`` imports it."""

from typing import Any

import mlflow
from mlflow.models import set_model

from covers.serving.cover_model import CoverModel


class CoversPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes a list of image paths, encoded bytes, base64 text or (H, W, 3) uint8 arrays and returns,
    per image, ``genre``, ``probability``, ``probabilities`` (every class) and ``error`` (``None`` if ok)."""

    def load_context(self, context) -> None:
        self.model = CoverModel.from_dir(context.artifacts["model"])

    def predict(self, context, model_input: list[Any]) -> list[dict[str, Any]]:
        return self.model.predict_items(model_input)


set_model(CoversPyfunc())
