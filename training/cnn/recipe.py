"""`CifarRecipe`: everything that decides a CIFAR-10 run's result, typed, validated, and hashed.

A recipe is the programme's arguments of `cnn_experiment` (K, L, P, H, lr, ...) plus archlab's
result-changing settings (data split, optimiser details, schedule, model options). How a run
executes (device, precision, CUDA graphs, tracking, folders) lives in `RunOptions` and the
execution policy, never here, so it can never change a run's identity.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from training.config import config_hash
from training.results_io import experiment_name

# cnn_experiment's own arguments that only say where/how a run executes (not in the recipe).
PROGRAMME_EXECUTION_ARGS = ("out_dir", "device", "checkpoints")


def model_types() -> Dict[str, type]:
    """MODEL_TYPES of the programme: -M cnn | resnet | ycn."""
    from models.cnn import CNN, ResNet, YourCNN

    return {"cnn": CNN, "resnet": ResNet, "ycn": YourCNN}


@dataclass(frozen=True)
class CifarRecipe:
    """One CIFAR-10 configuration: equal recipes train the same experiment (same config hash)."""

    # the programme's arguments (cnn_experiment's signature)
    run_name: str
    seed: int = 0                      # cnn_experiment draws one when the caller gives none
    bs_train: int = 128
    bs_test: int = 32                  # cnn_experiment fills in bs_train // 4 when not given
    batches: Optional[int] = 100       # training batches per epoch (None: the whole training split)
    epochs: int = 100
    early_stopping: Optional[int] = 3
    lr: float = 1e-3
    reg: float = 1e-3
    filters_per_layer: List[int] = field(default_factory=lambda: [64])   # K
    layers_per_block: int = 2                                             # L
    pool_every: int = 2                                                   # P
    hidden_dims: List[int] = field(default_factory=lambda: [1024])        # H
    model_type: str = "cnn"
    # archlab's settings (cnn_experiment's **kw): data
    n_train: Optional[int] = None      # None: all 50000 - n_valid
    n_valid: int = 5000
    split_seed: int = 42               # fixed, so every run is judged on the same validation images
    n_test: Optional[int] = None       # test on the test batch's first n_test images (None: all 10000)
    allow_small: bool = False          # below the programme's 30000/5000/10000 minimum (tests, smoke runs)
    augment: bool = False              # random translate (crop_padding px) + horizontal flip
    crop_padding: int = 4
    # optimisation
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
    # model
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    whiten_images: int = 5000          # training images that set a data-dependent init (YourCNN stem: whiten)
    valid_tta: bool = False            # test-time augmentation on the per-epoch validation too (else final test only)
    # the data: set by run_recipe from the arrays loaded (training.data.provenance), never by a caller
    data_digest: Optional[str] = None

    PROGRAMME_ARGS: ClassVar[Tuple[str, ...]] = (
        "run_name", "seed", "bs_train", "bs_test", "batches", "epochs", "early_stopping", "lr", "reg",
        "filters_per_layer", "layers_per_block", "pool_every", "hidden_dims", "model_type")
    # Fields added after runs were logged: at this value they stay out of the hash, so the runs
    # logged before them still match (skip when finished, resume when interrupted). Adding such a
    # field is the field plus one entry here.
    HASHED_ONLY_WHEN_SET: ClassVar[Dict[str, Any]] = {"norm_weight_decay": None, "data_digest": None,
                                                      "n_test": None}
    # Fields that are not settings: filled in from the data, recorded as tags and dataset inputs.
    FROM_DATA: ClassVar[Tuple[str, ...]] = ("data_digest",)

    # ------------------------------------------------------------------------------ building
    @classmethod
    def settings_names(cls) -> List[str]:
        """archlab's settings: the recipe fields a caller gives through cnn_experiment's **kw."""
        return [f.name for f in fields(cls) if f.name not in cls.PROGRAMME_ARGS + cls.FROM_DATA]

    def changed_settings(self) -> Dict[str, Any]:
        """The settings that differ from their defaults (what a caller had to give)."""
        out = {}
        for f in fields(self):
            if f.name in self.PROGRAMME_ARGS + self.FROM_DATA:
                continue
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if getattr(self, f.name) != default:
                out[f.name] = getattr(self, f.name)
        return out

    def with_(self, **changes: Any) -> "CifarRecipe":
        return replace(self, **changes)

    # ------------------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The run's name and results-file stem, e.g. exp1_1_L2_K32."""
        return experiment_name(self.run_name, self.filters_per_layer, self.layers_per_block)

    @property
    def channels(self) -> List[int]:
        """The conv layers' widths: each K repeated L times (the programme's CNN `channels`)."""
        return [k for k in self.filters_per_layer for _ in range(self.layers_per_block)]

    def fields_logged(self) -> Dict[str, Any]:
        """Every field, less those still at their hashed-only-when-set value."""
        return {k: v for k, v in asdict(self).items()
                if not (k in self.HASHED_ONLY_WHEN_SET and v == self.HASHED_ONLY_WHEN_SET[k])}

    def identity(self) -> Dict[str, Any]:
        """What makes two runs the same experiment: every field (the run name through `name`), the
        data digest included once known. Runs logged before the digest existed hash without it, so
        no run on recorded data ever matches them (skip or resume): they are not known to be equal."""
        out = self.fields_logged()
        out.pop("run_name")
        return {**out, "name": self.name}

    def config_hash(self) -> str:
        """The hash a run is tagged with (and its checkpoint named by). A rerun finds finished and
        interrupted runs by it, so it must not change for an unchanged configuration (tests pin it)."""
        return config_hash(self.identity())

    # ------------------------------------------------------------------------------ checks
    def validate(self) -> "CifarRecipe":
        """Clear one-line errors for every bad field, before any data is read or layer built."""
        self._check_settings()
        self._check_programme_args()
        self._check_images_per_epoch()
        return self

    def _check_settings(self) -> None:
        from training.engine.optim import SCHEDULES, check_optimizer_spec, make_loss

        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1 or None (all), got {self.n_train}")
        if self.n_valid < 1:
            raise ValueError(f"n_valid must be >= 1, got {self.n_valid}")
        check_int("n_test", self.n_test, 1, allow_none=True)
        check_optimizer_spec({**self.optimizer_spec(), "lr": 1.0, "weight_decay": 0.0})  # lr, reg: below
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {list(SCHEDULES)}")
        for name in ("warmup_frac", "lr_start_frac", "lr_end_frac"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 \
                    or (name == "warmup_frac" and value == 1.0):
                raise ValueError(f"{name} must be a number in [0, 1{')' if name == 'warmup_frac' else ']'}, "
                                 f"got {value!r}")
        check_int("lookahead_every", self.lookahead_every, 0)
        check_int("whiten_images", self.whiten_images, 1)
        if not 0.0 < float(self.lookahead_decay) < 1.0:
            raise ValueError(f"lookahead_decay must be in (0, 1), got {self.lookahead_decay!r}")
        make_loss("cross_entropy", self.label_smoothing)

    def _check_programme_args(self) -> None:
        """K is validated here, once (the model's shapes are checked by building it)."""
        types = model_types()
        if self.model_type not in types:
            raise ValueError(f"unknown model_type {self.model_type!r}; valid: {sorted(types)}")
        K = self.filters_per_layer
        if not K or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in K):
            raise ValueError(f"filters_per_layer (K) must be a non-empty list of positive ints, got {K!r}")
        if not self.hidden_dims and self.model_type != "ycn":
            raise ValueError(f"hidden_dims (H) must be a non-empty list for model_type {self.model_type!r}, got []")
        for name in ("layers_per_block", "pool_every", "epochs", "bs_train", "bs_test"):
            check_int(name, getattr(self, name), 1)
        check_int("batches", self.batches, 1, allow_none=True)
        check_int("early_stopping", self.early_stopping, 1, allow_none=True)
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not float(self.reg) >= 0:
            raise ValueError(f"reg must be >= 0, got {self.reg!r}")

    def _check_images_per_epoch(self, n_available: int = 50000) -> None:
        """The programme's floor (>= 30000 training images seen per epoch, >= 5000 validation
        images, all 10000 test images), checked before any data is read; allow_small lifts it for
        tests and smoke runs."""
        from training.data.cifar import FULL_TEST_IMAGES, MIN_TRAIN_IMAGES, MIN_VALID_IMAGES

        if self.allow_small:
            return
        n_train = self.n_train or (n_available - self.n_valid)
        per_epoch = n_train if self.batches is None else min(n_train, self.batches * self.bs_train)
        if per_epoch < MIN_TRAIN_IMAGES:
            limit = "" if self.batches is None else f" (batches={self.batches} x bs_train={self.bs_train})"
            raise ValueError(f"too few training images per epoch: {per_epoch} training images per epoch{limit} < "
                             f"{MIN_TRAIN_IMAGES}, the programme's minimum; use more batches (or batches=None / "
                             f"--batches 0 for all), a larger n_train, or allow_small for a smoke run")
        if self.n_valid < MIN_VALID_IMAGES:
            raise ValueError(f"n_valid={self.n_valid} < {MIN_VALID_IMAGES}, the programme's minimum of validation "
                             f"images; use allow_small for a smoke run")
        if self.n_test is not None and self.n_test < FULL_TEST_IMAGES:
            raise ValueError(f"n_test={self.n_test} < {FULL_TEST_IMAGES}, the programme's test set (every official "
                             f"test image); use n_test=None (--n-test 0) for all, or allow_small for a smoke run")

    # ------------------------------------------------------------------------------ what it builds
    def optimizer_spec(self) -> Dict[str, Any]:
        """The optimiser, as training.engine.optim.make_optimizer takes it."""
        spec = dict(name=self.optimizer, lr=self.lr, weight_decay=self.reg, bias_lr_scale=self.bias_lr_scale,
                    norm_weight_decay=self.norm_weight_decay)
        if self.optimizer == "sgd":
            spec.update(momentum=self.momentum, nesterov=self.nesterov)
        return spec

    def build_model(self, in_size=(3, 32, 32), num_classes: int = 10):
        """ArgMaxClassifier over the configured CNN/ResNet/YourCNN."""
        from models.classifier import ArgMaxClassifier

        kwargs = dict(self.model_kwargs)
        if self.model_type == "cnn":
            kwargs.setdefault("conv_params", dict(kernel_size=3, stride=1, padding=1))
            kwargs.setdefault("pooling_params", dict(kernel_size=2))
        net = model_types()[self.model_type](in_size, num_classes, channels=self.channels, pool_every=self.pool_every,
                                             hidden_dims=list(self.hidden_dims), **kwargs)
        return ArgMaxClassifier(net)


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """An integer (not a bool) >= minimum, or None where allowed; else a one-line error."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
