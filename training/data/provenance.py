"""Which data a run trained and was judged on: split digests, one run digest, MLflow dataset inputs.

Why: two copies of CIFAR-10 (lossless, JPEG q75) give results 3.4 points apart and look alike on
disk. Every run records the arrays it actually used (train / validation / test), so the same
command on another copy is another experiment (the run digest is part of the config hash) and the
report never mixes copies. The copy is recognised by its whole 10000-image test batch, always
hashed in full: n_test (a smoke run testing on the batch's first images) changes the test split a
run used, and so its test and run digests, but not the copy's kind.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, List, Mapping, Optional, Tuple

from training.data.digest import arrays_digest

# arrays_digest([test_x uint8, test_y int64]) of the copies ../shared/data/make_cifar10.py unpacks.
KNOWN_TEST_DIGESTS = {
    "lossless": "6c9ae9a2b5668a367fbdc2b978b167957278f9105bf124bef0641922f5198e4e",
    "jpeg": "44dc4362c8f1328961f0eb2bf1cefd619c9be8f3ba44e5bd7312dbdc3f8a187b",
}
CONTEXTS = {"train": "training", "valid": "validation", "test": "test"}  # MLflow's input contexts
MLFLOW_DIGEST_CHARS = 32  # MLflow stores at most 36 characters of a dataset digest
DATASET_RACE_TRIES = 4     # log_dataset_inputs: parallel workers registering one new dataset


@dataclass
class SplitData:
    """One split's arrays (numpy or torch) and their digest."""

    name: str                       # train | valid | test
    features: Any
    targets: Any
    digest: str = ""

    def __post_init__(self) -> None:
        self.digest = self.digest or arrays_digest([self.features, self.targets])


@dataclass
class DataRecord:
    """The data of one run: its splits, where they came from, and the run digest over all three."""

    prefix: str                     # dataset names: <prefix>-train, <prefix>-valid, <prefix>-test
    source: str                     # a folder, or the generator's call
    kind: str                       # lossless | jpeg | synthetic | unknown
    splits: List[SplitData]
    source_tags: Dict[str, str] = field(default_factory=dict)  # a generator's params (no folder)

    @property
    def digest(self) -> str:
        """sha256 over the split digests, in order: changes when any array a run used changes."""
        return hashlib.sha256(";".join(f"{s.name}:{s.digest}" for s in self.splits).encode()).hexdigest()

    def summary(self) -> Dict[str, Any]:
        """For a results file: the run digest, source, kind, each split's digest and its number of
        images (a smoke run's n_test shows in `sizes`, beside the test accuracy it measured)."""
        return {"digest": self.digest, "source": self.source, "kind": self.kind,
                "splits": {s.name: s.digest for s in self.splits},
                "sizes": {s.name: len(s.targets) for s in self.splits}}

    def tags(self) -> Dict[str, str]:
        from training.tracking import runs as tracking

        return {tracking.DATA_DIGEST_TAG: self.digest, tracking.DATA_SOURCE_TAG: self.source,
                tracking.DATA_KIND_TAG: self.kind}

    def log(self) -> None:
        """The data tags and one MLflow dataset input per split on the active run."""
        import mlflow

        from training.tracking.timing import mlflow_call

        with mlflow_call():  # part of the run's mlflow_time_s
            mlflow.set_tags(self.tags())
            log_dataset_inputs([self.dataset(s) for s in self.splits], [CONTEXTS[s.name] for s in self.splits])

    def dataset(self, split: SplitData):
        """An mlflow.data NumpyDataset with our digest (no second pass over the pixels)."""
        import mlflow.data
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json

        source = CodeDatasetSource(tags=self.source_tags) if self.source_tags else \
            get_dataset_source_from_json(json.dumps({"uri": self.source}), "local")
        return mlflow.data.from_numpy(_numpy(split.features), source=source, targets=_numpy(split.targets),
                                      name=f"{self.prefix}-{split.name}", digest=split.digest[:MLFLOW_DIGEST_CHARS])


def log_dataset_inputs(datasets: List[Any], contexts: List[str], tries: int = DATASET_RACE_TRIES) -> None:
    """mlflow.log_inputs on the active run, retried when another run registered the same dataset at
    the same moment.

    Why: MLflow's store looks up which (name, digest) datasets its experiment holds, then inserts the
    missing ones in one transaction. Two workers of a grid logging the same new split at once both
    insert it; the later one fails on the unique constraint and its transaction is rolled back
    (nothing half-written). On the retry the dataset exists and only this run's links are written.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(1, tries + 1):
        try:
            mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=[None] * len(datasets))
            return
        except MlflowException as exc:
            if attempt == tries or not is_duplicate_dataset_error(exc):
                raise
            time.sleep(0.05 * attempt)


def is_duplicate_dataset_error(exc: Exception) -> bool:
    """The store's unique-constraint failure on its datasets table (SQLite, PostgreSQL, MySQL words)."""
    text = str(exc).lower()
    return "datasets" in text and ("unique constraint" in text or "duplicate" in text)


def _numpy(a: Any):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else a


def cifar_kind(test_digest: str) -> str:
    """lossless | jpeg for the digest of a known copy's whole test batch, else unknown."""
    return next((k for k, d in KNOWN_TEST_DIGESTS.items() if d == test_digest), "unknown")


_FOLDER_KINDS: Dict[Hashable, str] = {}
_FOLDER_KINDS_KEPT = 8


def folder_kind(key: Hashable, test_x: Any, test_y: Any) -> str:
    """The kind of the copy whose whole test batch is (test_x, test_y), hashed once per `key` (a
    folder and its files' stamps): a grid's runs on one folder pay for the 30 MB hash once, even
    when their splits differ."""
    if key not in _FOLDER_KINDS:
        if len(_FOLDER_KINDS) >= _FOLDER_KINDS_KEPT:
            _FOLDER_KINDS.pop(next(iter(_FOLDER_KINDS)))
        _FOLDER_KINDS[key] = cifar_kind(arrays_digest([test_x, test_y]))
    return _FOLDER_KINDS[key]


def cifar_record(folder: str, train: Tuple[Any, Any], valid: Tuple[Any, Any], test: Tuple[Any, Any],
                 kind: Optional[str] = None) -> DataRecord:
    """The record of a CIFAR-10 run's (images, labels) splits read from `folder`. kind: the copy's,
    from its whole test batch (folder_kind); None: recognised from `test`, right only when `test`
    is the whole batch (a subset's digest matches no known copy)."""
    splits = [SplitData(name, *xy) for name, xy in (("train", train), ("valid", valid), ("test", test))]
    return DataRecord("cifar10", str(folder), kind or cifar_kind(splits[2].digest), splits)


def synthetic_record(splits: Mapping[str, Any], generator: str, params: Mapping[str, Any]) -> DataRecord:
    """The record of Part 1's generated splits (each with .X and .y); the source is the call."""
    call = f"{generator}({', '.join(f'{k}={v}' for k, v in params.items())})"
    return DataRecord("synthetic", call, "synthetic",
                      [SplitData(name, splits[name].X, splits[name].y) for name in ("train", "valid", "test")],
                      source_tags={"generator": generator, **{k: str(v) for k, v in params.items()}})
