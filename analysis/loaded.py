"""Reload Part 1's logged models as BinaryClassifiers, so figures are rebuilt from the runs."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from models.classifier import BinaryClassifier


class ExportedScores(nn.Module):
    """Holds a reloaded model whose forward gives raw class scores.

    MLflow 3 logs PyTorch models as torch.export programs by default; they reload as a
    GraphModule that refuses .train()/.eval() (it was exported in eval mode already). Keeping it
    out of the module tree makes the eval() calls of the project's plotting code harmless.
    """

    def __init__(self, scores_model: nn.Module):
        super().__init__()
        self.__dict__["scores_model"] = scores_model  # not a submodule: eval() must not reach it

    def train(self, mode: bool = True) -> "ExportedScores":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores_model(x)


def logged_model_uri(run_id: str) -> str:
    """`models:/<id>` of the newest model run `run_id` logged (runs name it after the configuration;
    older runs called it `model`)."""
    import mlflow

    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}'",
                                        order_by=[{"field_name": "creation_time", "ascending": False}])
    return f"models:/{found[0].model_id}" if found else f"runs:/{run_id}/model"


def load_binary_classifier(run_id: str, threshold: Optional[float] = None) -> BinaryClassifier:
    """The model logged by run `run_id` as a BinaryClassifier on the CPU, with `threshold` (e.g. the
    run's roc_threshold metric) when given."""
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(logged_model_uri(run_id), map_location="cpu")
    if isinstance(model, BinaryClassifier):
        clf = model
    else:
        clf = BinaryClassifier(ExportedScores(model))
    if threshold is not None:
        clf.threshold = float(threshold)
    return clf
