"""`cnn_experiment` (programme Part 3): one CIFAR-10 configuration as one MLflow run.

A rerun is safe: a configuration whose run already FINISHED (same config hash) is skipped, and
an interrupted one continues its own MLflow run from the last saved epoch (model, optimizer,
scheduler, RNG, loader, early-stopping counter), so its metric steps stay contiguous.
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Sequence, Union

import torch

from training.config import COMPILE_MODES, config_hash
from training.results import FitResult
from training.results_io import experiment_name, save_experiment
from models.cnn import tta_modes, tta_of, tta_off
from training.engine.lookahead import Lookahead
from training.trainer import BatchLimit, ClassifierTrainer, load_checkpoint


def model_types() -> Dict[str, type]:
    """MODEL_TYPES of the programme: -M cnn | resnet | ycn."""
    from models.cnn import CNN, ResNet, YourCNN

    return {"cnn": CNN, "resnet": ResNet, "ycn": YourCNN}


@dataclass
class Settings:
    """archlab's extra knobs of cnn_experiment (its `**kw`), each validated before any work."""

    # data
    data_dir: Optional[str] = None
    download: bool = False
    n_train: Optional[int] = None      # None: all 50000 - n_valid
    n_valid: int = 5000
    split_seed: int = 42               # fixed, so every run is judged on the same validation images
    allow_small: bool = False          # below the programme's 30000/5000 minimum (tests, smoke runs)
    augment: bool = False              # random translate (crop_padding px) + horizontal flip
    crop_padding: int = 4
    # optimisation (lr and reg are cnn_experiment's own arguments)
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    bias_lr_scale: float = 1.0         # normalisation biases: lr x this, weight decay / this (airbench: 64)
    norm_weight_decay: Optional[float] = None  # weight decay of normalisation weights (BN scales); None: reg
    lr_schedule: str = "none"
    warmup_frac: float = 0.2
    lr_start_frac: float = 0.0         # linear_warmup_decay starts at this x lr ...
    lr_end_frac: float = 0.0           # ... and ends at this x lr
    lookahead_every: int = 0           # > 0: lookahead-EMA every this many steps (training.engine.lookahead)
    lookahead_decay: float = 0.95
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    whiten_images: int = 5000          # training images that set a data-dependent init (YourCNN stem: whiten)
    valid_tta: bool = False            # test-time augmentation on the per-epoch validation too (else final test only)
    # execution (do not change results, so not part of the config hash)
    amp: str = "auto"                  # auto: bf16 autocast on CUDA, off on CPU | bf16 | fp16 | off
    channels_last: str = "auto"        # auto: on CUDA and CPU (conv nets gain 15-30 %) | on | off
    compile: Union[bool, str] = False  # torch.compile: True (default mode), "reduce-overhead" (CUDA graphs:
                                       # small, launch-bound models) or "max-autotune"; checkpoints keep their keys
    cuda_graphs: str = "auto"          # replay each training step as one CUDA graph (training.engine.cuda_graph). auto: on
                                       # CUDA with a constant lr and no compile (exp1's launch-bound nets) | on | off
    test_each_epoch: bool = False      # also test after every epoch, as the final test does (TTA too): for
                                       # time-to-accuracy benchmarks only; nothing is chosen on it
    tracking: bool = True
    grid: Optional[str] = None
    restart: bool = False
    checkpoint_dir: str = "checkpoints"
    log_model: bool = True
    print_every: int = 1
    dry_run: bool = False              # validate everything (and find the data), train nothing

    EXECUTION_ONLY = ("data_dir", "download", "amp", "channels_last", "compile", "cuda_graphs", "test_each_epoch",
                      "tracking", "grid", "restart", "checkpoint_dir", "log_model", "print_every", "dry_run")
    # Options added after runs were logged: at their default they stay out of the config hash, so
    # the runs logged before them still match (skip when finished, resume when interrupted).
    HASHED_ONLY_WHEN_SET = {"norm_weight_decay": None}

    @classmethod
    def from_kw(cls, kw: Dict[str, Any]) -> "Settings":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ValueError(f"unknown cnn_experiment options {unknown}; valid extra options: {sorted(names)}")
        s = cls(**kw)
        s.check()
        return s

    def check(self) -> None:
        from training.engine.optim import check_optimizer_spec, make_loss, SCHEDULES

        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1 or None (all), got {self.n_train}")
        if self.n_valid < 1:
            raise ValueError(f"n_valid must be >= 1, got {self.n_valid}")
        check_optimizer_spec(self.optimizer_spec(lr=1.0, reg=0.0))
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {list(SCHEDULES)}")
        for name in ("warmup_frac", "lr_start_frac", "lr_end_frac"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 \
                    or (name == "warmup_frac" and value == 1.0):
                raise ValueError(f"{name} must be a number in [0, 1{')' if name == 'warmup_frac' else ']'}, "
                                 f"got {value!r}")
        _check_int("lookahead_every", self.lookahead_every, 0)
        _check_int("whiten_images", self.whiten_images, 1)
        if not 0.0 < float(self.lookahead_decay) < 1.0:
            raise ValueError(f"lookahead_decay must be in (0, 1), got {self.lookahead_decay!r}")
        make_loss("cross_entropy", self.label_smoothing)
        if not (isinstance(self.compile, bool) or self.compile in COMPILE_MODES[2:]):
            raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {self.compile!r}")
        for name, value, valid in (("amp", self.amp, ("auto", "bf16", "fp16", "off")),
                                   ("channels_last", self.channels_last, ("auto", "on", "off")),
                                   ("cuda_graphs", self.cuda_graphs, ("auto", "on", "off"))):
            if value not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")

    def optimizer_spec(self, lr: float, reg: float) -> Dict[str, Any]:
        spec = dict(name=self.optimizer, lr=lr, weight_decay=reg, bias_lr_scale=self.bias_lr_scale,
                    norm_weight_decay=self.norm_weight_decay)
        if self.optimizer == "sgd":
            spec.update(momentum=self.momentum, nesterov=self.nesterov)
        return spec

    def identity(self) -> Dict[str, Any]:
        """What makes two runs the same experiment (hashed): every result-changing option."""
        return {k: v for k, v in asdict(self).items() if k not in self.EXECUTION_ONLY
                and not (k in self.HASHED_ONLY_WHEN_SET and v == self.HASHED_ONLY_WHEN_SET[k])}


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if allow_none else ''}, got {value!r}")


def check_cnn_config(cfg: Dict[str, Any]) -> None:
    """Clear errors for the programme's own arguments (the model's shapes are checked by building it)."""
    types = model_types()
    if cfg["model_type"] not in types:
        raise ValueError(f"unknown model_type {cfg['model_type']!r}; valid: {sorted(types)}")
    K = cfg["filters_per_layer"]
    if not K or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in K):
        raise ValueError(f"filters_per_layer (K) must be a non-empty list of positive ints, got {K!r}")
    if not cfg["hidden_dims"] and cfg["model_type"] != "ycn":
        raise ValueError(f"hidden_dims (H) must be a non-empty list for model_type {cfg['model_type']!r}, got []")
    for name in ("layers_per_block", "pool_every", "epochs", "bs_train", "bs_test"):
        _check_int(name, cfg[name], 1)
    _check_int("batches", cfg["batches"], 1, allow_none=True)
    _check_int("early_stopping", cfg["early_stopping"], 1, allow_none=True)
    if not float(cfg["lr"]) > 0:
        raise ValueError(f"lr must be > 0, got {cfg['lr']!r}")
    if not float(cfg["reg"]) >= 0:
        raise ValueError(f"reg must be >= 0, got {cfg['reg']!r}")


def check_images_per_epoch(cfg: Dict[str, Any], settings: Settings, n_available: int = 50000) -> None:
    """The programme's floor (>= 30000 training images seen per epoch, >= 5000 validation images),
    checked before any data is read; allow_small lifts it for tests and smoke runs."""
    from training.data.cifar import MIN_TRAIN_IMAGES, MIN_VALID_IMAGES

    if settings.allow_small:
        return
    n_train = settings.n_train or (n_available - settings.n_valid)
    per_epoch = n_train if cfg["batches"] is None else min(n_train, cfg["batches"] * cfg["bs_train"])
    if per_epoch < MIN_TRAIN_IMAGES:
        limit = "" if cfg["batches"] is None else f" (batches={cfg['batches']} x bs_train={cfg['bs_train']})"
        raise ValueError(f"too few training images per epoch: {per_epoch} training images per epoch{limit} < "
                         f"{MIN_TRAIN_IMAGES}, the programme's minimum; use more batches (or batches=None / "
                         f"--batches 0 for all), a larger n_train, or allow_small for a smoke run")
    if settings.n_valid < MIN_VALID_IMAGES:
        raise ValueError(f"n_valid={settings.n_valid} < {MIN_VALID_IMAGES}, the programme's minimum of validation "
                         f"images; use allow_small for a smoke run")


def build_model(cfg: Dict[str, Any], settings: Settings, in_size=(3, 32, 32), num_classes: int = 10):
    """ArgMaxClassifier over the configured CNN/ResNet/YourCNN (channels = each K repeated L times)."""
    from models.classifier import ArgMaxClassifier

    channels = [k for k in cfg["filters_per_layer"] for _ in range(cfg["layers_per_block"])]
    kwargs = dict(settings.model_kwargs)
    if cfg["model_type"] == "cnn":
        kwargs.setdefault("conv_params", dict(kernel_size=3, stride=1, padding=1))
        kwargs.setdefault("pooling_params", dict(kernel_size=2))
    net = model_types()[cfg["model_type"]](in_size, num_classes, channels=channels, pool_every=cfg["pool_every"],
                                           hidden_dims=list(cfg["hidden_dims"]), **kwargs)
    return ArgMaxClassifier(net)


def autocast_dtype(settings: Settings, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype a run trains with on `device` (None: fp32); benchmarks reuse it to match."""
    if device.type != "cuda" or settings.amp == "off":
        return None  # bf16 autocast is ~10x slower on CPUs without native bf16
    return torch.float16 if settings.amp == "fp16" else torch.bfloat16


def use_cuda_graph(settings: Settings, device: torch.device) -> bool:
    """Whether the run's training steps are replayed as CUDA graphs (settings.cuda_graphs); "on"
    where a graph cannot work is refused here, before any data is read."""
    if settings.cuda_graphs == "off":
        return False
    blockers = [reason for reason, blocks in (
        (f"device {device.type!r} is not CUDA", device.type != "cuda"),
        (f"lr_schedule={settings.lr_schedule!r} changes the lr a graph would replay", settings.lr_schedule != "none"),
        (f"compile={settings.compile!r} captures graphs itself", bool(settings.compile))) if blocks]
    if blockers and settings.cuda_graphs == "on":
        raise ValueError(f"cuda_graphs='on' cannot work here: {'; '.join(blockers)}; use cuda_graphs 'auto' or 'off'")
    return not blockers


def configuration_hash(cfg: Dict[str, Any], settings: Settings) -> str:
    """The hash a run is tagged with (and its checkpoint named by): equal hash, same experiment.
    A rerun finds finished and interrupted runs by it, so it must not change for an unchanged
    configuration (tests pin it)."""
    name = experiment_name(cfg["run_name"], cfg["filters_per_layer"], cfg["layers_per_block"])
    identity = {k: v for k, v in cfg.items() if k not in ("out_dir", "device", "checkpoints", "kw", "run_name")}
    return config_hash({**identity, "name": name, **settings.identity()})


def _prior_runs(chash: str):
    """Earlier runs of this exact configuration in the experiment this run will land in."""
    import mlflow

    from training.tracking import runs as tracking

    exp_id = tracking.current_experiment_id()
    return mlflow.search_runs(experiment_ids=[exp_id], filter_string=f"tags.`{tracking.HASH_TAG}` = '{chash}'",
                              output_format="pandas", order_by=["attributes.start_time DESC"])


def cnn_experiment(run_name: str, out_dir: str = "./results", seed: Optional[int] = None, device: Optional[str] = None,
                   bs_train: int = 128, bs_test: Optional[int] = None, batches: Optional[int] = 100,
                   epochs: int = 100, early_stopping: Optional[int] = 3, checkpoints: Optional[str] = None,
                   lr: float = 1e-3, reg: float = 1e-3, filters_per_layer: Sequence[int] = (64,),
                   layers_per_block: int = 2, pool_every: int = 2, hidden_dims: Sequence[int] = (1024,),
                   model_type: str = "cnn", **kw) -> Optional[str]:
    """Train one configuration, write the results JSON, log it all to MLflow; returns the JSON path
    (None when an identical configuration already finished and was skipped).

    batches: training batches per epoch (None: the whole training split); validation and test
    always use every image. The fit's "test" curves are on the validation split (early stopping
    and checkpoints use it); the official test set is evaluated once, with the best checkpoint.
    kw: archlab's extra options, see `Settings`.
    """
    if not seed:
        seed = random.randint(0, 2**31)
    if bs_test is None:
        bs_test = max(bs_train // 4, 1)
    cfg = dict(run_name=run_name, out_dir=out_dir, seed=seed, device=device, bs_train=bs_train, bs_test=bs_test,
               batches=batches, epochs=epochs, early_stopping=early_stopping, checkpoints=checkpoints, lr=lr,
               reg=reg, filters_per_layer=list(filters_per_layer), layers_per_block=layers_per_block,
               pool_every=pool_every, hidden_dims=list(hidden_dims), model_type=model_type, kw=dict(kw))
    settings = Settings.from_kw(kw)
    check_cnn_config(cfg)
    check_images_per_epoch(cfg, settings)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda_graph = use_cuda_graph(settings, dev)
    if settings.dry_run:  # the whole check, cheaply: layers on the meta device, data only located
        from training.data.cifar import require_cifar10

        with torch.device("meta"):
            build_model(cfg, settings)
        require_cifar10(settings.data_dir, settings.download)
        return None
    torch.manual_seed(seed)
    model = build_model(cfg, settings)  # shape errors (maps shrinking below 1x1) surface here
    name = experiment_name(run_name, cfg["filters_per_layer"], layers_per_block)
    chash = configuration_hash(cfg, settings)
    state_base = checkpoints or os.path.join(settings.checkpoint_dir, f"{name}-{chash}.pt")

    resume_run_id = None
    if settings.restart:
        for path in (state_base, f"{state_base}.state"):
            if os.path.exists(path):
                os.remove(path)
    elif settings.tracking:
        from training.tracking import runs as tracking

        prior = _prior_runs(chash)
        done = prior[(prior["status"] == "FINISHED") | (prior.get(f"tags.{tracking.DIVERGED_TAG}") == "true")] \
            if len(prior) else prior
        if len(done):
            print(f"*** Skipping {name}: already finished in run {done.run_id.iloc[0]} (same config hash {chash}); "
                  f"use restart to train it again")
            return None
        if len(prior) and os.path.isfile(f"{state_base}.state"):
            resume_run_id = prior.run_id.iloc[0]

    print(f"*** Starting cnn_experiment {name} with config: {cfg}")
    if dev.type == "cuda":  # fixed shapes: let cuDNN time its algorithms once per shape (what bench/gpu_check measured)
        torch.backends.cudnn.benchmark = True
    from training.data.cifar import cifar10_loaders
    from training.engine.optim import make_loss, make_optimizer, make_scheduler

    channels_last = settings.channels_last != "off"
    dl_train, dl_valid, dl_test = cifar10_loaders(
        settings.data_dir, dev, settings.n_train, settings.n_valid, bs_train, bs_test, settings.augment, seed,
        channels_last=channels_last, download=settings.download, allow_small=settings.allow_small,
        split_seed=settings.split_seed, crop_padding=settings.crop_padding)
    dl_train_epoch = BatchLimit(dl_train, batches)
    model = model.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    for module in model.modules():  # data-dependent init (YourCNN's whitening stem), before any snapshot
        if hasattr(module, "init_from_data"):
            module.init_from_data(dl_train.first_images(settings.whiten_images))
    if settings.compile:  # after the data-dependent init; in place, so state_dict keys stay plain
        model.compile(mode=None if settings.compile is True else settings.compile)
    optimizer = make_optimizer(model, settings.optimizer_spec(lr, reg))
    scheduler, interval = make_scheduler(optimizer, settings.lr_schedule, epochs, len(dl_train_epoch),
                                         settings.warmup_frac, settings.lr_start_frac, settings.lr_end_frac)
    lookahead = Lookahead(model, epochs * len(dl_train_epoch), settings.lookahead_every, settings.lookahead_decay) \
        if settings.lookahead_every else None
    trainer = ClassifierTrainer(model, make_loss("cross_entropy", settings.label_smoothing), optimizer, device=dev,
                                scheduler=scheduler, scheduler_interval=interval, amp_dtype=autocast_dtype(settings, dev),
                                grad_clip=settings.grad_clip, lookahead=lookahead, cuda_graph=cuda_graph)

    def train_and_test(on_epoch_end=None) -> tuple:
        t0 = time.perf_counter()
        history = []  # per-epoch metrics (times, images/s, lr) for the results file
        final_tta = tta_of(model)

        def record(metrics):
            if settings.test_each_epoch and "epoch_test_acc" not in metrics:  # not again for a resume's replay
                # Added to fit's own dict, so the training state saved next keeps it; after the epoch's
                # timing, so epoch_time_s stays training + validation.
                with tta_modes(final_tta):
                    metrics["epoch_test_acc"] = trainer.test_epoch(dl_test, verbose=False).accuracy
            history.append({k: v for k, v in metrics.items() if k != "improved"})
            if on_epoch_end is not None:
                on_epoch_end(metrics)

        with contextlib.nullcontext() if settings.valid_tta else tta_off(model):
            fit = trainer.fit(dl_train_epoch, dl_valid, epochs, checkpoints=state_base, early_stopping=early_stopping,
                              print_every=settings.print_every, resume=not settings.restart, on_epoch_end=record)
        model.load_state_dict(load_checkpoint(state_base, map_location=dev))
        test = trainer.test_epoch(dl_test, verbose=False)
        final = dict(test_acc=test.accuracy, test_loss=sum(test.losses) / len(test.losses),
                     best_valid_acc=max(fit.test_acc), best_epoch=1 + fit.test_acc.index(max(fit.test_acc)),
                     fit_wall_time_s=time.perf_counter() - t0, n_params=n_params)
        return fit, final, history

    def graph_report() -> Dict[str, Any]:
        """How the training steps ran, for the results file and the run's tags."""
        graphed = trainer.graphed_step
        if graphed is None:
            return dict(cuda_graph=False)
        if graphed.fallback:
            print(f"*** CUDA graphs off for {name}, it trained eagerly: {graphed.fallback}")
        return dict(cuda_graph=graphed.fallback is None, cuda_graph_replays=graphed.replays,
                    eager_steps=graphed.eager_steps, **({"cuda_graph_fallback": graphed.fallback}
                                                        if graphed.fallback else {}))

    n_params = sum(p.numel() for p in model.parameters())
    if not settings.tracking:  # runs without MLflow installed (e.g. a bare GPU box)
        fit, final, history = train_and_test()
        return _finish(run_name, out_dir, cfg, fit, final, name, epochs=history, execution=graph_report())

    import mlflow

    from training.tracking import runs as tracking

    tags = {tracking.ROLE_TAG: "child", tracking.HASH_TAG: chash, "archlab.device": str(dev),
            **({tracking.GRID_TAG: settings.grid} if settings.grid else {})}
    with tracking.open_run(name, tags=tags, run_id=resume_run_id) as run:
        if resume_run_id:
            print(f"*** Resuming MLflow run {resume_run_id} of {name}")
        tracking.log_params({**{k: v for k, v in cfg.items() if k != "kw"}, **settings.identity(),
                             "n_train": len(dl_train.dataset), "n_valid": len(dl_valid.dataset),
                             "n_test": len(dl_test.dataset), "n_params": n_params,
                             "channels": [k for k in cfg["filters_per_layer"] for _ in range(layers_per_block)]})
        logger = tracking.EpochLogger(prefix_map={"test_loss": "valid_loss", "test_acc": "valid_acc",
                                                  "best_test_acc": "best_valid_acc"})
        try:
            fit, final, history = train_and_test(logger)
        except Exception as e:
            from training.trainer import NonFiniteLossError

            if isinstance(e, NonFiniteLossError):
                tracking.mark_diverged(str(e))
            raise
        # best_valid_acc is already a per-epoch metric: logging it again would duplicate its last step
        tracking.log_metrics({k: v for k, v in final.items() if k != "best_valid_acc"}, step=fit.num_epochs)
        execution = graph_report()
        mlflow.set_tags({f"archlab.{k}": v for k, v in execution.items() if k in ("cuda_graph", "cuda_graph_fallback")})
        path = _finish(run_name, out_dir, cfg, fit, final, name, epochs=history, execution=execution,
                       mlflow_run_id=run.info.run_id)
        mlflow.log_artifact(path, "results")
        mlflow.log_artifact(state_base, "checkpoints")
        if settings.log_model:
            example = next(iter(dl_test))[0][:1].float().cpu().contiguous().numpy()
            tracking.log_torch_model(model.float(), example)
    return path


def _finish(run_name, out_dir, cfg, fit: FitResult, final: Dict[str, Any], name: str, **extra) -> str:
    path = save_experiment(run_name, out_dir, cfg, fit, extra={"final_test": final, **extra})
    print(f"*** {name}: best valid_acc={final['best_valid_acc']:.2f}% (epoch {final['best_epoch']}), "
          f"test_acc={final['test_acc']:.2f}%")
    print(f"*** Output file {path} written")
    return path
