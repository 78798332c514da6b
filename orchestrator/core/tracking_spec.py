"""The spec's `tracking` section: where a job's (or a campaign's) runs are mirrored for the team to see.

    tracking:
      mlflow: {uri: http://mlflow.internal:5000, experiment: gpt-pretraining}

Without `uri`, MLFLOW_TRACKING_URI of the submitting shell is used (and stored, so the driver, which runs
elsewhere, gets it). With MLFLOW_TRACKING_URI set and no `tracking` section, jobs are tracked there too.
Logging runs in the Ray job's driver, never in the training loop (orchestrator/runtime/tracking.py).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "orch"
URI_PATTERN = re.compile(r"^(https?|file|sqlite|postgresql|mysql|databricks)(\+\w+)?:.+|^/.+")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MlflowSpec(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI (http://host:5000, file:///dir, sqlite:///db); "
                            "default MLFLOW_TRACKING_URI of the submitting shell")
    experiment: str = Field(DEFAULT_EXPERIMENT, min_length=1, max_length=500,
                            description="MLflow experiment the runs go to (created if missing)")

    @field_validator("uri")
    @classmethod
    def _plain_uri(cls, uri: str | None) -> str | None:
        if uri is None:
            return uri
        if re.match(r"^[a-z0-9+]+://[^/]*@", uri):
            raise ValueError("must not carry credentials; set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
                             "or MLFLOW_TRACKING_TOKEN in env (they are kept secret) instead")
        if not URI_PATTERN.match(uri):
            raise ValueError("must be an MLflow tracking URI such as http://127.0.0.1:5000, file:///path or "
                             "sqlite:///path.db")
        return uri


class TrackingSpec(_Section):
    mlflow: MlflowSpec | None = Field(None, description="log params, metrics by step, tags and the checkpoint "
                                      "location to MLflow; a campaign is a parent run with a child run per trial")
