"""Validated run configuration: one pydantic schema, YAML files, CLI overrides.

A config is a YAML file (or the name of a built-in one in ``meddet/configs``) validated by
:class:`Config`. Unknown keys are errors that name the key and the file. Values that can be
derived (number of classes, channel counts) are never stored here: the builders read them
from the dataset and the modules.

Precedence, lowest to highest: schema defaults < config file < CLI flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meddet.errors import MedDetError
from meddet.geometry import SIZE_DIVISOR, check_img_size

CONFIG_DIR = Path(__file__).parent / "configs"

#: Where a detector may place the nmODE² block (``model.nmode``, ``--nmode``).
NmodePlacement = Literal["head", "fpn", "backbone", "none"]
NMODE_PLACEMENTS: tuple[str, ...] = get_args(NmodePlacement)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Training-time augmentation; evaluation never augments."""

    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    scale_jitter: tuple[float, float] = Field(
        (0.9, 1.1), description="range of the random resize factor applied before padding"
    )
    brightness: float = Field(0.1, ge=0, description="max additive brightness shift (0-1 scale)")
    contrast: float = Field(0.1, ge=0, description="max relative contrast change")
    gamma: float = Field(0.1, ge=0, description="max relative gamma change")
    crop: int | None = Field(
        None, description="train on a random crop x crop window of the (resized, padded) input "
        "that holds a randomly chosen object whole (a multiple of 32; at or above img_size the whole "
        "image is used); evaluation keeps the whole image. Cuts the cost of a step by about "
        "(img_size/crop)^2")
    crop_balance: bool = Field(
        False, description="with crop: draw the object the window holds class-balanced (a class "
        "present in the image uniformly, then one of its objects) instead of uniformly, so a rare "
        "class is seen as often as a common one")

    @model_validator(mode="after")
    def _check_crop(self) -> AugmentConfig:
        if self.crop is not None:
            try:
                check_img_size(self.crop, what="augmentation.crop", minimum=64)
            except MedDetError as exc:
                raise ValueError(str(exc)) from None
        return self


class DataConfig(_Strict):
    """Where the data is and how images are prepared."""

    root: str | None = Field(None, description="dataset folder (images/ + annotations/)")
    img_size: int = Field(256, ge=64, description=f"resize long side to this, pad to a multiple of {SIZE_DIVISOR}")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    augment: bool = Field(True, description="apply training augmentation")
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    on_bad_box: Literal["fail", "skip"] = Field(
        "fail", description="invalid boxes: stop with an error, or skip them with a counted warning"
    )

    @model_validator(mode="after")
    def _check_size(self) -> DataConfig:
        try:
            check_img_size(self.img_size, what="img_size", minimum=64)
        except MedDetError as exc:
            raise ValueError(str(exc)) from None
        return self


class ModelConfig(_Strict):
    """Which detector to build; see ``meddet.models.DETECTORS`` for the names."""

    name: str = Field("gfl_mbv2", description="zoo name, e.g. gfl_r50, gfl_mbv2, meddet")
    nmode: NmodePlacement | None = Field(
        None, description="nmODE² placement; None keeps the zoo entry's default"
    )
    pretrained: str | None = Field(
        None,
        description="backbone initialisation: 'imagenet' (torchvision's ImageNet weights from "
        "its cache or a download, else an error), 'auto' (those weights when they can be had, "
        "else random), 'none'/None (random) or a state_dict file",
    )
    lambda_qfl: float = Field(1 / 3.25, ge=0, le=1, description="λ of eq. 12 (QFL weight)")
    mu_dfl: float = Field(0.25 / 3.25, ge=0, le=1, description="μ of eq. 12 (DFL weight)")
    score_thr: float = Field(0.05, ge=0, le=1, description="post-process score threshold")
    nms_iou: float = Field(0.6, gt=0, le=1, description="class-wise NMS IoU threshold")
    max_per_img: int = Field(100, ge=1, description="detections kept per image")
    min_box_size: float = Field(
        0.0, ge=0, description="drop detections this wide or tall or less (original pixels)"
    )
    # Training from random weights (docs/training.md, "The early loss plateau"). None keeps
    # the paper's / mmdetection's GFL behaviour, so configs that do not set them (and the
    # recorded configs of earlier runs) build the same detector as before.
    nmode_form: Literal["paper", "residual"] | None = Field(
        None, description="nmODE² in the head: 'paper' (None): the block's output y(T) "
        "replaces the tower output; 'residual': x + α·(Φ(x) − Φ(0)) with a per-channel gate α "
        "that starts at 0, so the block starts as the identity")
    reg_prior: float | None = Field(
        None, ge=0, le=16, description="initial expected box side distance in strides "
        "(regression bias); None: GFL's near-uniform start (8 strides)")
    box_loss_norm: Literal["mmdet", "mean"] | None = Field(
        None, description="box losses divided by the sum of their score weights at least 1 "
        "('mmdet', None) or by that sum whatever its size ('mean': a weighted mean whose scale "
        "does not depend on how high the scores are yet)")
    fpn_norm: Literal["none", "gn"] | None = Field(
        None, description="GroupNorm after every FPN conv ('gn'); None/'none': mmdetection's "
        "FPN (conv bias, no norm)")
    atss_topk: int | None = Field(
        None, ge=1, description="ATSS candidates per level and object (None: 9, as GFL)")
    zero_init_residual: bool | None = Field(
        None, description="start every residual block of a randomly initialised backbone as "
        "the identity (last BatchNorm scale 0); ignored with pretrained weights")
    residual_init: float | None = Field(
        None, ge=0, description="start the last BatchNorm scale of every residual block of a "
        "randomly initialised backbone at this value (0: the identity, as zero_init_residual; "
        "None: BatchNorm's 1, or 0 with zero_init_residual); takes precedence over "
        "zero_init_residual; ignored with pretrained weights")
    qfl_beta: float | None = Field(
        None, ge=0, le=4, description="QFL focusing exponent β (None: GFL's 2); a lower β "
        "keeps the push on a wrong class's channel from vanishing while scores are still low")


class TrainConfig(_Strict):
    """Optimiser and schedule (mmdetection's 1x schedule by default)."""

    epochs: int = Field(12, ge=1)
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd: SGD + momentum as in mmdetection's GFL schedule (the paper "
        "gives no optimiser settings); adamw: faster from-scratch CPU runs"
    )
    batch_size: int = Field(4, ge=1)
    lr: float = Field(0.01, gt=0, description="SGD learning rate for base_batch_size images")
    base_batch_size: int = Field(16, ge=1, description="lr is scaled linearly by batch/base")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(500, ge=0, description="linear warm-up length in iterations")
    warmup_ratio: float = Field(0.001, gt=0, le=1, description="lr factor at iteration 0")
    lr_steps: tuple[float, ...] = Field(
        (8 / 12, 11 / 12), description="fractions of training where lr is multiplied by 0.1"
    )
    grad_clip: float | None = Field(35.0, description="max grad norm; None disables clipping")
    max_iters: int | None = Field(None, ge=1, description="stop after this many iterations")
    amp: bool = Field(True, description="mixed precision (CUDA only; ignored on CPU)")
    cpu_amp: bool = Field(
        False, description="bfloat16 autocast of the training forward pass on the CPU (about "
        "1.6x faster steps where the CPU has AVX-512 BF16 or AMX; weights, optimiser state and "
        "losses stay float32); ignored on CUDA"
    )
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    seed: int = Field(0, description="seed for weights, data order and augmentation")
    eval_every: int = Field(1, ge=1, description="evaluate on val every N epochs")
    checkpoint_every: int = Field(
        1, ge=1, description="write last.pt every N epochs (and after the last one); best.pt "
        "is written at every new best regardless"
    )
    checkpoint_every_iters: int | None = Field(
        None, ge=1, description="also write last.pt every N iterations"
    )
    max_nonfinite: int = Field(20, ge=1, description="stop after this many non-finite steps in a row")
    # Weight EMA (meddet.engine.ema.ModelEMA): after each optimiser step the average moves
    # towards the weights by 1 - d_t, d_t = ema_decay * (1 - exp(-t / ema_warmup)), t = steps
    # taken so far; 1 / (1 - d_t) is roughly how many recent steps it averages. The defaults
    # suit the short CPU schedules (hundreds to a few thousand iterations): with
    # ema_warmup=100, d_t is 0.63 at t=100, 0.95 at 300 and 0.99 at 500 (the last ~130 steps of
    # a 500-iteration run), while YOLOv5/RTMDet's 2000 would keep d_t below 0.23 for 500
    # iterations (the "average" would be the latest weights). ema_decay=0.999 caps the window at
    # ~1000 steps; their 0.9998-0.9999 suits 100k-iteration schedules: in a 3000-iteration
    # run, 0.9998 would leave two thirds of the average on the weights of the first 1000 steps.
    ema: bool = Field(
        False, description="keep an exponential moving average (EMA) of the weights: "
        "validation evaluates it and best.pt/last.pt store it as the model (the trained "
        "weights are kept for --resume)")
    ema_decay: float = Field(
        0.999, gt=0, lt=1, description="EMA decay once warmed up (averages ~1/(1-decay) steps)")
    ema_warmup: int = Field(
        100, ge=0, description="EMA warm-up in optimiser steps: the decay used at step t is "
        "ema_decay * (1 - exp(-t / ema_warmup)); 0: no warm-up")


class DistillConfig(_Strict):
    """Multi-teacher adversarial distillation (paper Sec. III-B..E) and KD baselines."""

    # Checked against the methods table when a run is built: the schema does not repeat it.
    method: str = Field("meddet", description="a name in meddet.distill.methods.METHODS")
    student: str = Field("meddet", description="zoo name of the student")
    fusion: Literal["lwff", "sum", "concat"] = "lwff"
    per_teacher_alpha: bool = Field(False, description="one LWFF α module per teacher")
    aatm: bool = Field(True, description="use the adversarial auxiliary teacher module")
    sigma: float = Field(0.5, ge=0, le=1, description="σ of eq. 14 (detection loss weight)")
    tau: float = Field(0.3, ge=0, le=1, description="τ of eq. 14 (distillation loss weight)")
    disc_lr: float = Field(1e-4, gt=0, description="discriminator base learning rate (Adam), "
                           "scaled by the student's schedule (warm-up, steps)")
    disc_mode: Literal["pixel", "global"] = Field(
        "pixel", description="D on every location's feature vector, or on pooled features")
    teacher_img_size: int | None = Field(
        None, ge=64, description="run the teachers at this input size (None: the student's); "
        "AFA pools their features to the student's sizes (meddet method only)")
    teacher_cache: bool = Field(
        False, description="keep the teachers' outputs per (image, augmentation variant) in "
        "memory, so that after the first epochs the teachers rarely run; the training images' "
        "augmentation is then drawn from teacher_cache_variants fixed variants per image")
    teacher_cache_variants: int = Field(
        2, ge=1, description="augmentation variants per image with teacher_cache (1: each image "
        "is always augmented the same way)")
    teacher_cache_gb: float = Field(
        4.0, gt=0, description="memory the teacher cache may use (on the training device); "
        "outputs that do not fit are recomputed at every step")

    @model_validator(mode="after")
    def _check_weights(self) -> DistillConfig:
        if self.sigma + self.tau > 1 + 1e-9:
            raise ValueError(f"sigma + tau must be <= 1 (eq. 14), got {self.sigma} + {self.tau}")
        return self


class Config(_Strict):
    """A complete run configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)


def builtin_configs() -> list[str]:
    """Names of the configs shipped inside the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise MedDetError(
                f"config file {name_or_path} does not exist; pass a YAML file or one of: "
                + ", ".join(builtin_configs())
            )
        return path
    builtin = CONFIG_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise MedDetError(
            f"unknown config {name_or_path!r}; use a YAML file path or one of: "
            + ", ".join(builtin_configs())
        )
    return builtin


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown key {loc!r} in {source}; remove it or check its spelling"
    return f"invalid value for {loc!r} in {source}: {first['msg']}"


def _deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in upd.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], val)
        else:
            out[key] = val
    return out


def load_config(
    name_or_path: str | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Load and validate a config.

    Args:
        name_or_path: a built-in config name (``default``, ``paper``, ``cpu-small``, ``cpu-crop``) or a YAML
            path; ``None`` means the schema defaults.
        overrides: nested dict of values that win over the file (e.g. from CLI flags);
            entries whose value is ``None`` are ignored, so unset flags change nothing.

    Raises:
        MedDetError: unreadable file, unknown key, wrong type; the message names the key
            and the file.
    """
    raw: dict[str, Any] = {}
    source = "the defaults"
    if name_or_path is not None:
        path = _resolve(name_or_path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise MedDetError(f"cannot read config {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise MedDetError(f"config {path} is not valid YAML: {exc}".splitlines()[0]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise MedDetError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    if overrides:
        raw = _deep_update(raw, _drop_none(overrides))
        source = f"{source} (with command-line overrides)"
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise MedDetError(_format_error(exc, source)) from exc


def load_run_config(cfg_file: str | Path, overrides: dict[str, Any] | None = None, *,
                    made_by: str = "meddet") -> Config:
    """The resolved ``config.yaml`` of an earlier run, with ``overrides`` on top (for ``--resume``).

    Args:
        cfg_file: the run directory's ``config.yaml`` (written by :func:`meddet.runs.write_run_config`).
        overrides: nested flags; ``None`` values are ignored, as in :func:`load_config`.
        made_by: the command that makes such run directories, named in the error message.

    Raises:
        MedDetError: the file is missing, unreadable, or no longer validates.
    """
    cfg_file = Path(cfg_file)
    if not cfg_file.is_file():
        raise MedDetError(f"cannot resume: {cfg_file} is missing (a run directory made by "
                          f"`{made_by}` has it)")
    try:
        saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MedDetError(f"cannot read {cfg_file}: {exc}".splitlines()[0]) from exc
    if not isinstance(saved, dict):
        raise MedDetError(f"{cfg_file} must be a mapping of sections; it is not a meddet run config")
    for key in ("meddet_version", "command"):  # run metadata, not config
        saved.pop(key, None)
    try:
        return Config.model_validate(_deep_update(saved, _drop_none(overrides or {})))
    except ValidationError as exc:
        raise MedDetError(_format_error(exc, f"{cfg_file} (with command-line overrides)")) from exc


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def config_to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (tuples written as lists)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
