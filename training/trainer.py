"""The Trainer family (programme Part 1, reused by every experiment).

Three levels: `fit` (epochs, early stopping, checkpoints, resume), `train_epoch`/`test_epoch`
(one pass over a loader) and `train_batch`/`test_batch` (model specific, in subclasses).
Tracking is not the trainer's job: `fit` calls `on_epoch_end(metrics)` once per epoch and the
MLflow logger (training/tracking/runs.py) plugs in there.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from training.engine.console import epoch_line, on_tty
from training.results import BatchResult, EpochResult, FitResult

EpochCallback = Callable[[Dict[str, Any]], None]


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss); raised at the end of the epoch where it happened."""


class Trainer(ABC):
    def __init__(self, model: nn.Module, device: Optional[torch.device | str] = None):
        self.model = model
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            model.to(self.device)

    # ----------------------------------------------------------------------------- fit level
    def fit(self, dl_train: Iterable, dl_test: Iterable, num_epochs: int, checkpoints: Optional[str] = None,
            early_stopping: Optional[int] = None, print_every: int = 1, resume: bool = False,
            on_epoch_end: Optional[EpochCallback] = None, **kw) -> FitResult:
        """Train for up to `num_epochs`, evaluating on `dl_test` after each epoch.

        checkpoints: file for the best model's state dict (saved when test accuracy improves);
            the full training state (optimizer, scheduler, RNG, counters, curves) is written
            beside it every epoch as `<checkpoints>.state` so an interrupted fit can resume.
        early_stopping: stop after this many epochs without test-accuracy improvement.
        resume: continue from `<checkpoints>.state` when it exists. The saved epochs' metrics are
            replayed through `on_epoch_end` first, so a logger that skips steps it already has
            (training.tracking.runs.EpochLogger) ends with every epoch exactly once.
        on_epoch_end: called with a metrics dict after each epoch (after the state is saved).
        kw: passed to train_epoch/test_epoch (e.g. max_batches, verbose).
        """
        if num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
        if early_stopping is not None and early_stopping < 1:
            raise ValueError(f"early_stopping must be None or >= 1, got {early_stopping}")
        state_file = f"{checkpoints}.state" if checkpoints else None
        curves, best_acc, history, epochs_without_improvement, start_epoch = self._start_or_resume(
            state_file if resume else None, dl_train, print_every, on_epoch_end)

        for epoch in range(start_epoch, num_epochs):
            if early_stopping is not None and epochs_without_improvement >= early_stopping:
                break
            verbose = bool(print_every) and ((epoch + 1) % print_every == 0 or epoch == num_epochs - 1)
            bars = verbose and on_tty()  # elsewhere: one line per epoch (training.engine.console)
            if bars:
                print(f"--- EPOCH {epoch + 1}/{num_epochs} ---")
            lr = self.current_lr()
            t0 = time.perf_counter()
            train_res = self.train_epoch(dl_train, **{"verbose": bars, **kw})
            train_time = time.perf_counter() - t0
            test_res = self.test_epoch(dl_test, **{"verbose": bars, "label": "valid", **kw})
            epoch_time = time.perf_counter() - t0

            train_loss, test_loss = _mean(train_res.losses), _mean(test_res.losses)
            curves["train_loss"].append(train_loss)
            curves["train_acc"].append(train_res.accuracy)
            curves["test_loss"].append(test_loss)
            curves["test_acc"].append(test_res.accuracy)

            improved = best_acc is None or test_res.accuracy > best_acc
            if improved:
                best_acc, epochs_without_improvement = test_res.accuracy, 0
                if checkpoints:
                    self.save_checkpoint(checkpoints, verbose=bars)
            else:
                epochs_without_improvement += 1

            if not math.isfinite(train_loss):
                raise NonFiniteLossError(f"training loss became {train_loss} in epoch {epoch + 1}")
            metrics = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_res.accuracy, test_loss=test_loss,
                           test_acc=test_res.accuracy, best_test_acc=best_acc, lr=lr, epoch_time_s=epoch_time,
                           train_images_per_s=(self._last_train_samples / train_time) if train_time > 0 else 0.0,
                           improved=improved)
            history.append(metrics)
            if verbose and not bars:
                print(epoch_line(metrics, num_epochs), flush=True)
            if state_file:
                self.save_training_state(state_file, dl_train, epoch=epoch + 1, curves=curves, best_acc=best_acc,
                                         epochs_without_improvement=epochs_without_improvement, history=history)
            if on_epoch_end is not None:
                on_epoch_end(metrics)
        return FitResult(len(curves["train_acc"]), **curves)

    def _start_or_resume(self, state_file: Optional[str], dl_train, print_every: int,
                         on_epoch_end: Optional[EpochCallback]) -> tuple:
        """(curves, best_acc, history, epochs_without_improvement, start_epoch): fresh, or from
        `state_file` when it exists, its saved epochs replayed through on_epoch_end."""
        if not (state_file and os.path.isfile(state_file)):
            return dict(train_loss=[], train_acc=[], test_loss=[], test_acc=[]), None, [], 0, 0
        saved = self.load_training_state(state_file, dl_train)
        if print_every:
            print(f"*** Resuming from {state_file} after epoch {saved['epoch']}")
        history = saved.get("history", [])  # the per-epoch metrics dicts given to on_epoch_end
        if on_epoch_end is not None:
            for metrics in history:
                on_epoch_end(metrics)
        return saved["curves"], saved["best_acc"], history, saved["epochs_without_improvement"], saved["epoch"]

    def current_lr(self) -> Optional[float]:
        """Learning rate used by the coming epoch (None when the trainer has no optimizer)."""
        return None

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str, verbose: bool = True) -> None:
        """Save the model's state dict (loadable with weights_only=True)."""
        _atomic_save(self.model.state_dict(), filename)
        if verbose:
            print(f"*** Saved checkpoint {filename}")

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue training; subclasses add optimizer and scheduler."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def save_training_state(self, filename: str, dl_train, **progress) -> None:
        state = {
            "trainer": self.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loader": dl_train.state_dict() if hasattr(dl_train, "state_dict") else None,
            **progress,
        }
        _atomic_save(state, filename)

    def load_training_state(self, filename: str, dl_train) -> Dict[str, Any]:
        state = load_checkpoint(filename)
        for key in ("trainer", "epoch", "curves", "best_acc", "epochs_without_improvement"):
            if key not in state:
                raise ValueError(f"{filename} is not an archlab training-state checkpoint (missing {key!r})")
        self.load_state_dict(state["trainer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if state["loader"] is not None and hasattr(dl_train, "load_state_dict"):
            dl_train.load_state_dict(state["loader"])
        return state

    # ----------------------------------------------------------------------------- epoch level
    def train_epoch(self, dl_train: Iterable, **kw) -> EpochResult:
        self.model.train(True)
        res = self._foreach_batch(dl_train, self.train_batch, **{"label": "train", **kw})
        self._last_train_samples = self._last_num_samples
        return res

    def test_epoch(self, dl_test: Iterable, **kw) -> EpochResult:
        """One evaluation pass; kw `label` names it on the console (fit passes "valid")."""
        self.model.train(False)
        with torch.no_grad():
            return self._foreach_batch(dl_test, self.test_batch, **{"label": "test", **kw})

    _last_num_samples = 0
    _last_train_samples = 0

    def _foreach_batch(self, dl: Iterable, forward_fn: Callable[[Any], BatchResult], verbose: bool = True,
                       max_batches: Optional[int] = None, label: Optional[str] = None) -> EpochResult:
        """Run forward_fn on every batch (at most max_batches); sums stay on the device."""
        num_batches = len(dl)
        if max_batches is not None:
            if max_batches < 1:
                raise ValueError(f"max_batches must be >= 1, got {max_batches}")
            num_batches = min(num_batches, max_batches)
        losses, num_correct, num_samples = [], 0, 0
        label = label or forward_fn.__name__
        bar = tqdm(total=num_batches, desc=label, file=sys.stdout, disable=not (verbose and on_tty()),
                   leave=True, dynamic_ncols=True)
        with bar:
            for batch_idx, batch in enumerate(dl):
                if batch_idx >= num_batches:
                    break
                res = forward_fn(batch)
                losses.append(torch.as_tensor(res.loss, dtype=torch.float32).detach())
                num_correct = num_correct + res.num_correct
                num_samples += len(batch[1])
                bar.update()
            loss_values = torch.stack(losses).cpu().tolist() if losses else []
            accuracy = 100.0 * float(num_correct) / max(num_samples, 1)
            bar.set_description(f"{label} (Avg. Loss {_mean(loss_values):.3f}, "
                                f"Accuracy {accuracy:.1f})")
        self._last_num_samples = num_samples
        return EpochResult(losses=loss_values, accuracy=accuracy)

    @abstractmethod
    def train_batch(self, batch) -> BatchResult:
        ...

    @abstractmethod
    def test_batch(self, batch) -> BatchResult:
        ...


class ClassifierTrainer(Trainer):
    """Trains a `Classifier`; correct predictions are counted with the classifier's own rule
    (`classify_scores`), so a BinaryClassifier's threshold counts in the accuracy."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                 device: Optional[torch.device | str] = None, scheduler=None, scheduler_interval: str = "epoch",
                 amp_dtype: Optional[torch.dtype] = None, grad_clip: Optional[float] = None,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, lookahead=None,
                 cuda_graph: bool = False):
        """scheduler_interval: step the scheduler per "epoch" or per "batch".
        amp_dtype: autocast dtype on CUDA (e.g. torch.bfloat16); ignored on CPU, where it is slow.
        augment: a batch transform applied to training inputs only, on the device.
        lookahead: a training.engine.lookahead.Lookahead over this model, stepped after each update.
        cuda_graph: replay each training step as one CUDA graph (training.engine.cuda_graph): for
            launch-bound models on a GPU; needs CUDA and a constant lr (no scheduler)."""
        super().__init__(model, device)
        if scheduler_interval not in ("epoch", "batch"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}")
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.amp_dtype = amp_dtype
        self.grad_clip = grad_clip
        self.augment = augment
        self.lookahead = lookahead
        self.graphed_step = None
        if cuda_graph:
            from training.engine.cuda_graph import GraphedTrainStep

            device_type = self.device.type if self.device is not None else next(model.parameters()).device.type
            if device_type != "cuda":
                raise ValueError(f"cuda_graph=True needs a CUDA device, got {device_type!r}; use cuda_graph=False")
            if scheduler is not None:
                raise ValueError("cuda_graph=True needs a constant learning rate (a captured step replays the lr "
                                 f"it was captured with), got scheduler {type(scheduler).__name__}; use cuda_graph=False")
            self.graphed_step = GraphedTrainStep(self._step, optimizer)

    def _to_device(self, batch):
        X, y = batch
        if self.device is not None:
            X, y = X.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return X, y

    def _autocast(self, X: torch.Tensor, cache: bool = True):
        enabled = self.amp_dtype is not None and X.device.type == "cuda"
        return torch.autocast(device_type=X.device.type, dtype=self.amp_dtype, enabled=enabled, cache_enabled=cache)

    def train_batch(self, batch) -> BatchResult:
        X, y = self._to_device(batch)
        if self.augment is not None:
            X = self.augment(X)
        if self.graphed_step is not None:
            loss, num_correct = self.graphed_step(X, y)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss, num_correct = self._step(X, y)
        if self.lookahead is not None:
            self.lookahead.step()
        if self.scheduler is not None and self.scheduler_interval == "batch":
            self.scheduler.step()
        return BatchResult(loss, num_correct)

    def _step(self, X: torch.Tensor, y: torch.Tensor):
        """Forward, backward and update on zeroed gradients; (loss, num_correct) stay on the device.
        Everything here may be captured into a CUDA graph: no host syncs, no Python-side state."""
        # A graph must recompute its weight casts at every replay: no autocast cache while graphing.
        with self._autocast(X, cache=self.graphed_step is None):
            z = self.model(X)
            loss = self.loss_fn(z, y)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach().float(), self._num_correct(z, y)

    def test_batch(self, batch) -> BatchResult:
        X, y = self._to_device(batch)
        with torch.no_grad(), self._autocast(X):
            z = self.model(X)
            loss = self.loss_fn(z, y)
        return BatchResult(loss.detach().float(), self._num_correct(z, y))

    def _num_correct(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        classify = getattr(self.model, "classify_scores", None)
        y_pred = classify(z.float()) if classify is not None else torch.argmax(z, dim=1)
        return (y_pred == y).sum()

    def train_epoch(self, dl_train: Iterable, **kw) -> EpochResult:
        res = super().train_epoch(dl_train, **kw)
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        return res

    def current_lr(self) -> Optional[float]:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> Dict[str, Any]:
        if self.graphed_step is not None:
            from training.engine.cuda_graph import uncapturable_state_dict

            optimizer_state = uncapturable_state_dict(self.optimizer)
        else:
            optimizer_state = self.optimizer.state_dict()
        state = {**super().state_dict(), "optimizer": optimizer_state}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.lookahead is not None:
            state["lookahead"] = self.lookahead.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])  # new state tensors: a captured graph is stale
        if self.graphed_step is not None:
            self.graphed_step.reset()
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.lookahead is not None and "lookahead" in state:
            self.lookahead.load_state_dict(state["lookahead"])


def load_checkpoint(filename: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load an archlab checkpoint safely (weights_only=True), with a clear error for bad files."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint {filename!r} does not exist")
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "not a usable checkpoint"
        raise ValueError(f"{filename!r} is not a readable archlab checkpoint (corrupt, truncated or holding "
                         f"non-tensor objects): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, file-size limit): the previous one is intact."""


def _atomic_save(obj: Any, filename: str) -> None:
    """Write to a temp file then rename, so a kill mid-save never leaves a truncated checkpoint; a
    failed write removes its temp file and says what to do (the previous checkpoint stays intact)."""
    tmp = f"{filename}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, filename)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise CheckpointWriteError(f"could not write checkpoint {filename!r} (disk full or file-size limit?): "
                                   f"{str(e).splitlines()[0][:200]}; free space, then rerun the same command: it "
                                   f"resumes from the last saved epoch") from None


def _mean(values) -> float:
    return float(sum(values) / len(values)) if len(values) else float("nan")


class BatchLimit:
    """A loader view that yields at most `max_batches` batches per epoch (the programme's
    `batches` option), applied to the training loader only; evaluation always sees every image."""

    def __init__(self, loader, max_batches: Optional[int]):
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be None or >= 1, got {max_batches}")
        self.loader, self.max_batches = loader, max_batches

    def __len__(self) -> int:
        return len(self.loader) if self.max_batches is None else min(len(self.loader), self.max_batches)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= len(self):
                break
            yield batch

    def __getattr__(self, name):  # batch_size, dataset, state_dict, ... of the wrapped loader
        return getattr(self.loader, name)
