"""Checks of everything a run will write or read back, made before the first batch: a bad
--out-dir, --checkpoint-dir, run name or saved training state is a one-line error up front,
not a traceback after hours of training."""
from __future__ import annotations

import os
import re
from typing import Any, Optional

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_run_name(name: Any) -> None:
    """A run name becomes a file name in out_dir and checkpoint_dir: no folders, no '..', not empty."""
    if not isinstance(name, str) or not RUN_NAME.match(name) or ".." in name:
        raise ValueError(f"run name {name!r} must be a plain file name (letters, digits, '.', '_', '-'; no '/', "
                         f"no '..', not empty): results and checkpoints are named after it; pass e.g. -n exp1_1")


def check_writable_dir(path: str, what: str, option: str) -> None:
    """`path` is (or can be created as) a folder this process may write in. Creates nothing."""
    target = os.path.abspath(path or ".")
    probe = target
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{what} {path!r} cannot be a folder: {probe!r} is a file; pass another {option}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path!r} is not writable ({probe!r} is not writable by this user); "
                         f"pass a writable {option}")


def check_outputs(run_name: str, out_dir: str, checkpoints: Optional[str], checkpoint_dir: str) -> None:
    """Everything a run will write: its name (a file name) and the folders of its results and checkpoints."""
    check_run_name(run_name)
    check_writable_dir(out_dir, "out_dir", "--out-dir")
    if checkpoints:
        check_writable_dir(os.path.dirname(checkpoints) or ".", "checkpoints' folder", "--checkpoints")
    else:
        check_writable_dir(checkpoint_dir, "checkpoint_dir", "--checkpoint-dir")


def _hint(state_file: str) -> str:
    return f"delete {state_file!r} to train this configuration afresh, or rerun with --restart true (restart=True)"


def read_training_state(state_file: str) -> dict:
    """A saved training state a rerun would resume from, or a one-line error saying how to get past it."""
    from training.trainer import load_checkpoint

    try:
        state = load_checkpoint(state_file)
    except ValueError as e:
        raise ValueError(f"training state {state_file!r} is corrupt ({str(e).splitlines()[0][:200]}); "
                         f"{_hint(state_file)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"training state {state_file!r} is corrupt (not a dict); {_hint(state_file)}")
    return state


def check_training_state(state_file: str, model) -> None:
    """A saved training state a rerun would resume from: readable, and made for this model."""
    import copy

    hint = _hint(state_file)
    weights = (read_training_state(state_file).get("trainer") or {}).get("model")
    if weights is None:  # not a full training state: the resume's own checks name what is missing
        return
    try:
        copy.deepcopy(model).load_state_dict(weights)
    except (RuntimeError, KeyError) as e:
        first = str(e).replace("\n", " ")[:300]
        raise ValueError(f"training state {state_file!r} does not fit this model (another architecture: "
                         f"{first}); {hint}") from None
