"""The run `mlflow run` opened for a command that refused its inputs: named, explained, FAILED.

MLflow creates the project's run (random name, the -P values as params) before the command
starts; when the command then rejects a value, that run would end FAILED with nothing saying
why. This gives it the name `rejected-<entry point>`, the reason as the tag `archlab.rejected`
and as its description (the UI's "Description" box), and ends it FAILED.
"""
from __future__ import annotations

import os
from typing import Optional

REJECTED_TAG = "archlab.rejected"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI


def mark_rejected(message: str, run_id: Optional[str] = None) -> Optional[str]:
    """Mark the project run (default: $MLFLOW_RUN_ID) as rejected with `message`; returns its id,
    or None outside `mlflow run`. Never raises: the caller's own error must still be shown."""
    from mlflow.tracking import MlflowClient

    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        client = MlflowClient()
        entry = client.get_run(run_id).data.tags.get("mlflow.project.entryPoint", "run")
        client.set_tag(run_id, "mlflow.runName", f"rejected-{entry}")
        client.set_tag(run_id, REJECTED_TAG, message[:5000])
        client.set_tag(run_id, NOTE_TAG, f"Rejected before training (`{entry}`): {message}")
        client.set_terminated(run_id, "FAILED")
    except Exception as e:  # the store itself is the problem: say so, keep the real error
        print(f"(could not mark MLflow run {run_id} as rejected: {type(e).__name__}: {e})")
        return None
    return run_id
