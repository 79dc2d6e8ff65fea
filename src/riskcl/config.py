"""Typed experiment configuration: dataclasses loaded from YAML with dotted command-line overrides.

A YAML file may start from another with ``base: other.yaml`` (relative to the file). Every key is checked
against the dataclasses (unknown keys get a did-you-mean), every value against its type and range, and the
loss and data set against their registries, before any work starts. The resolved config is saved in the run.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ._names import did_you_mean
from .data.duplicates import DEFAULT_DUPLICATES
from .decision.rules import DECISION_RULES
from .defaults import AUGMENT_FLIPS, ROTATION_DEGREES
from .taxonomy import DEFAULT_LAMBDA1, DEFAULT_LAMBDA2

MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the key, the value and what was expected."""


@dataclass
class DataConfig:
    name: str = "demo"                 # data-set registry name (riskcl.data.list_datasets())
    root: str | None = None            # data folder in its public layout (not needed for demo)
    image_size: int = 64               # square side fed to the model (paper: 224)
    val_fraction: float = 0.15         # share of the carving pool held out for validation (selection) by group
    test_fraction: float = 0.2         # share carved for test when the data set has no official test split
    calib_fraction: float = 0.1        # share carved for calibration (risk control only; 0 = none)
    split_seed: int = 0                # seed of the carved splits (kept apart from the training seed)
    fold: int | None = None            # use validation fold `fold` of `num_folds` group folds instead
    num_folds: int | None = None       # number of group folds for `fold` (None: the carved validation split)
    on_bad_image: str = "error"        # "error" or "skip" (skipped files are listed in the run folder)
    duplicates: str = DEFAULT_DUPLICATES  # byte-identical images in two splits: "drop" the later copies (test
                                       # stays clean), "warn" (keep them: a paper's protocol) or "error"
    cache_dir: str | None = None       # decoded-image cache (default ~/.cache/riskcl or $RISKCL_CACHE_DIR)
    num_workers: int = 2               # batches a background thread gathers ahead (0: gather in the training loop)
    limit_train: int | None = None     # at most this many training images (class-stratified, seeded): quick trials
    dicom: dict = field(default_factory=dict)  # DICOM files: {window: auto | none | [centre, width], frames: middle
                                       # | refuse} (riskcl.data.dicom; {}: auto window, the middle frame)
    options: dict = field(default_factory=dict)  # adapter options, e.g. magnifications for breakhis


@dataclass
class ModelConfig:
    name: str = "resnet18"             # any timm architecture (segmentation: the encoder); "metadata-only": logistic
                                       # regression on model.metadata alone (the reference of a fusion study)
    arch: str | None = None            # segmentation: the decoder of segmentation-models-pytorch ("unet", "fpn",
                                       # ...; None: unet); classification: must stay None
    pretrained: Any = "auto"           # "auto": hub if reachable else random init (recorded); true; false
    weights_path: str | None = None    # local .safetensors weights
    drop_rate: float = 0.0             # dropout before the classifier head
    options: dict = field(default_factory=dict)  # more keyword arguments of the model (timm's, or for
                                       # segmentation smp's, e.g. {decoder_channels: [64, 32, 16, 8, 4]})
    metadata: list = field(default_factory=list)  # clinical metadata columns fed to the model with the image, e.g.
                                       # [age, sex, localization] (encoded on the training split; [] = image only)
    fusion: str = "late"               # with metadata: "late" (features side by side) or "film" (metadata scale and
                                       # shift the image features)
    metadata_spec: dict = field(default_factory=dict)  # declared kinds and accepted ranges of metadata columns, e.g.
                                       # {age: {kind: numeric, range: [0, 120]}}: values outside count as unknown in
                                       # the data and are refused at prediction (see riskcl.data.encoding)
    metadata_dropout: float = 0.0      # training: each row's metadata replaced by "all missing" with this probability
    metadata_hidden: int = 32          # width of the metadata MLP


@dataclass
class LossConfig:
    name: str = "ce"                   # loss registry name (riskcl.losses.list_losses())
    params: dict = field(default_factory=dict)  # e.g. {lambda1: 5, lambda2: 20}
    taxonomy: str | None = None        # a taxonomy YAML / built-in name overriding the data set's own


@dataclass
class CostConfig:
    lambda1: float = DEFAULT_LAMBDA1   # clinical cost of a Type I error (benign called malignant)
    lambda2: float = DEFAULT_LAMBDA2   # clinical cost of a Type II error (malignant called benign)
    within: float = 1.0                # clinical cost of a confusion inside a superclass (a correct decision costs 0)
    matrix: Any = None                 # or a full K x K matrix / {true: {predicted: cost}}; overrides the others
    uncertain: Any = None              # plausible costs: {lambda1: [lo, hi], lambda2: [lo, hi], distribution:
                                       # uniform | log-uniform | log-normal} or {pt: [lo, hi]}; None: the fixed ones


@dataclass
class TrackingConfig:
    mlflow: str | None = None          # MLflow tracking URI: "sqlite:///runs/mlflow.db" (a local file), or a server
                                       # "http://host:5000"; None: no MLflow
    tensorboard: str | None = None     # TensorBoard event folder (one subfolder per run), e.g. "runs/tb"; None: none
    experiment: str | None = None      # MLflow experiment (default: the config's name; a sweep: the sweep's name)
    tags: dict = field(default_factory=dict)  # MLflow tags (a sweep adds its grid values)


@dataclass
class AugmentConfig:
    rotation: float = ROTATION_DEGREES  # degrees: each training image turned by an angle uniform in +-rotation (0:
                                       # none; the paper's 15)
    flips: str = "both"                # random flips, each with probability 1/2: "both" (horizontal and vertical:
                                       # the paper's), "horizontal" or "none"
    scale: float = 0.0                 # zoom: each image magnified by a factor uniform in [1, 1 + scale] about a
                                       # random centre that keeps the view inside it (0: none; at most 1)
    color: float = 0.0                 # brightness and contrast, each multiplied by a factor uniform in
                                       # [1 - color, 1 + color] (0: none; under 1; images only, never masks)


@dataclass
class OptimConfig:
    lr: float = 1e-4                   # AdamW learning rate (the paper does not give one; 1e-4 fine-tunes well)
    weight_decay: float = 0.05         # AdamW weight decay
    batch_size: int = 32               # paper: 32
    grad_clip: float | None = None     # max gradient norm, None for no clipping
    eval_batch_size: int = 128         # batch size of validation, calibration and test predictions


@dataclass
class AdoptConfig:
    """What riskcl cannot guess about a model trained elsewhere (``riskcl adopt``); unused by ``riskcl train``."""
    classes: list = field(default_factory=list)  # the model's outputs in order, by the data set's class names (a
                                       # table: its class columns, in order, e.g. [p_MEL, p_NV, ...] named below)
    output: str = "logits"             # what the model (or the table) gives per class: "logits" or "probs"
    input_size: Any = None             # a model file's input: side (int) or [height, width]
    layout: str = "nchw"               # "nchw" or "nhwc"
    channels: str = "rgb"              # "rgb", "bgr" or "gray" (one channel: the mean of R, G and B)
    scale: float = 1.0                 # the range the model expects: 1 (pixels / 255) or 255 (raw 0..255)
    mean: Any = None                   # per channel, in that range (subtracted), or null
    std: Any = None                    # per channel, in that range (divided by), or null
    resize: str = "stretch"            # "stretch" to input_size, or "crop": the shorter side to fit, centre crop
    id_column: str = "image"           # a table: the column naming each image (file name, stem, or path)
    class_columns: list = field(default_factory=list)  # a table: one column per entry of `classes` (default: the
                                       # class names themselves)
    label_column: str | None = None    # a table: the true class (else the data set's label)
    split_column: str | None = None    # a table: train / val / calib / test per row (else the splits are carved)
    group_column: str | None = None    # a table: the patient / lesion id (checked against the splits)


@dataclass
class ExperimentConfig:
    name: str = "run"                  # the run's name in reports and model cards
    task: str = "classification"       # "classification" (a label per image) or "segmentation" (a lesion mask per
                                       # image); the data set and the loss must serve the same task
    seed: int = 0                      # training seed (initialisation, shuffling, augmentation)
    epochs: int = 10                   # training epochs (shorten a trial with epochs=1 data.limit_train=500)
    device: str = "auto"               # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    amp: bool = True                   # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True         # on CUDA
    deterministic: bool = True         # deterministic algorithms (bit-identical reruns on CPU)
    threads: int | str | None = None   # CPU threads; None: OMP_NUM_THREADS, else the usable cores (the same numbers
                                       # whatever else runs); "auto": the cores other processes leave free, shared
                                       # among riskcl trainings (faster on a busy machine; its numbers can move);
                                       # chosen at start, recorded, kept on resume
    select_metric: str = "mean_cost"   # best epoch on validation: "mean_cost", "cer" (lower) or "f1_macro", "accuracy";
                                       # segmentation: "mean_cost" (per pixel), "fnr" (lower) or "dice"
    decision: str = "superclass"       # "superclass": malignant iff p(malignant) >= 0.5, then the best class
                                       # within the decided superclass; "argmax": the paper's fine-class argmax
    tta: str = "none"                  # test-time augmentation at evaluation: "none" or "flip" (mean of 4 flips)
    max_steps_per_epoch: int | None = None  # cap for smoke tests
    progress: bool = True              # progress bars and per-epoch lines
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training augmentation (riskcl.data.augment)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    adopt: AdoptConfig = field(default_factory=AdoptConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TTA_CHOICES = ("none", "flip")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _as_float(value: Any) -> float | None:
    """A number, or a numeric string (YAML 1.1 reads ``1e-4`` as a string): the float; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"`{key}`: expected {' or '.join(_type_name(a) for a in args)}, but got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = _as_float(value)
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif tp is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return _build(tp, value, key + ".")
    raise ConfigError(f"`{key}`: expected {_type_name(tp)}, but got {value!r} ({type(value).__name__})")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            hint = did_you_mean(key, names).replace("'", f"'{prefix}", 1)
            raise ConfigError(f"Unknown config key '{prefix}{key}'{hint}; expected one of {names}")
        kwargs[key] = _coerce(value, hints[key], prefix + str(key))
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"Override '{dotted}': '{part}' is not a section")
        node = child
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(node.get(last), dict):
        node[last] = deep_merge(node[last], value)  # a section given as a mapping updates, not replaces
    else:
        node[last] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; values are parsed as YAML scalars / lists."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"Override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"Override '{item}': invalid YAML value ({str(exc).splitlines()[0]})") from None
    return out


def parse_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load`` with errors that name ``source``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({' '.join(str(exc).split())})") from None


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a mapping, following ``base:`` chains; errors name the file and what was expected."""
    if path.is_dir():
        raise ConfigError(f"Config file {path} is a folder; expected a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular `base:` chain")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; expected a YAML config") from None
    data = parse_yaml_text(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty (or only comments); expected a YAML mapping of config keys")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, but got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: `base` = {base!r}: expected the path of one YAML file (relative to {path.name})")
    merged = read_yaml(path.parent / base, seen + (path.resolve(),))
    return deep_merge(merged, data)


def deep_merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k not in ("params", "options"):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_from_dict(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Build and validate a config from a mapping plus dotted overrides."""
    merged = copy.deepcopy(dict(data))
    for key, value in (overrides or {}).items():
        _set_dotted(merged, key, value)
    cfg = _build(ExperimentConfig, merged)
    validate_config(cfg)
    return cfg


def load_config(path: str | Path, overrides: Mapping[str, Any] | list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (following ``base:``), apply overrides, validate. Errors name the file and key."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    data = read_yaml(Path(path))
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check(cond: bool, key: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"`{key}` = {value!r}: expected {expected}")


def _check_top(cfg: ExperimentConfig) -> None:
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "an integer >= 1")
    _check(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, f"an integer in [0, {MAX_SEED}]")
    from .tasks import TASK_NAMES, task_of

    _check(cfg.task in TASK_NAMES, "task", cfg.task, f"one of {list(TASK_NAMES)}{did_you_mean(cfg.task, TASK_NAMES)}")
    metrics = task_of(cfg.task).select_metrics
    _check(cfg.select_metric in metrics, "select_metric", cfg.select_metric,
           f"one of {list(metrics)} (for {cfg.task})")
    _check(cfg.decision in DECISION_RULES, "decision", cfg.decision, f"one of {list(DECISION_RULES)}")
    _check(cfg.tta in TTA_CHOICES, "tta", cfg.tta, f"one of {list(TTA_CHOICES)}")
    _check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"), "device", cfg.device,
           "'auto', 'cpu' or 'cuda[:N]'")
    _check(cfg.threads is None or cfg.threads == "auto" or (isinstance(cfg.threads, int) and not isinstance(
        cfg.threads, bool) and cfg.threads >= 1), "threads", cfg.threads, "None, 'auto' or an integer >= 1")
    _check(cfg.max_steps_per_epoch is None or cfg.max_steps_per_epoch >= 1, "max_steps_per_epoch",
           cfg.max_steps_per_epoch, "None or >= 1")
    o = cfg.optim
    _check(math.isfinite(o.lr) and o.lr > 0, "optim.lr", o.lr, "a finite number > 0")
    _check(math.isfinite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
    _check(o.batch_size >= 1, "optim.batch_size", o.batch_size, ">= 1")
    _check(o.eval_batch_size >= 1, "optim.eval_batch_size", o.eval_batch_size, ">= 1")
    _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", o.grad_clip, "None or > 0")
    a = cfg.augment
    _check(math.isfinite(a.rotation) and 0 <= a.rotation <= 180, "augment.rotation", a.rotation,
           "degrees in [0, 180]")
    _check(a.flips in AUGMENT_FLIPS, "augment.flips", a.flips,
           f"one of {list(AUGMENT_FLIPS)}{did_you_mean(str(a.flips), AUGMENT_FLIPS)}")
    _check(math.isfinite(a.scale) and 0 <= a.scale <= 1, "augment.scale", a.scale, "in [0, 1] (0: no zoom)")
    _check(math.isfinite(a.color) and 0 <= a.color < 1, "augment.color", a.color, "in [0, 1) (0: no jitter)")
    _check(cfg.model.pretrained in ("auto", True, False), "model.pretrained", cfg.model.pretrained,
           "'auto', true or false")
    _check(0 <= cfg.model.drop_rate < 1, "model.drop_rate", cfg.model.drop_rate, "in [0, 1)")
    c = cfg.cost
    for key, value in (("cost.lambda1", c.lambda1), ("cost.lambda2", c.lambda2), ("cost.within", c.within)):
        _check(math.isfinite(value) and value >= 0, key, value, "a finite number >= 0")
    run_cost_distribution(cfg)
    t = cfg.tracking
    for key, value in (("tracking.mlflow", t.mlflow), ("tracking.tensorboard", t.tensorboard),
                       ("tracking.experiment", t.experiment)):
        _check(value is None or (isinstance(value, str) and value.strip() != ""), key, value,
               "a non-empty string or null")


def _check_data(d: DataConfig) -> None:
    from .data.duplicates import DUPLICATE_POLICIES
    from .data.registry import BAD_IMAGE_POLICIES, dataset_options, list_datasets

    names = list_datasets()
    _check(d.name in names, "data.name", d.name, f"one of {names}{did_you_mean(d.name, names)}")
    _check(d.root is not None or not _root_required(d.name), "data.root", d.root, "the data folder (required)")
    _check(8 <= d.image_size <= 2048, "data.image_size", d.image_size, "an integer in [8, 2048]")
    _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "in (0, 1)")
    _check(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "in (0, 1)")
    _check(d.limit_train is None or d.limit_train >= 1, "data.limit_train", d.limit_train, "None or an integer >= 1")
    _check(0 <= d.calib_fraction < 1, "data.calib_fraction", d.calib_fraction, "in [0, 1) (0: no calibration split)")
    _check(d.val_fraction + d.test_fraction + d.calib_fraction < 0.95, "data.val_fraction + test_fraction + "
           "calib_fraction", d.val_fraction + d.test_fraction + d.calib_fraction, "< 0.95 (training needs data)")
    _check(0 <= d.split_seed <= MAX_SEED, "data.split_seed", d.split_seed, f"an integer in [0, {MAX_SEED}]")
    if d.num_folds is not None:
        _check(d.num_folds >= 2, "data.num_folds", d.num_folds, "an integer >= 2")
        _check(d.fold is not None, "data.num_folds", d.num_folds, "to come with `data.fold` (which fold validates)")
    if d.fold is not None:
        k = d.num_folds or 5
        _check(0 <= d.fold < k, "data.fold", d.fold, f"an integer in [0, {k}) (num_folds = {k})")
    _check(d.on_bad_image in BAD_IMAGE_POLICIES, "data.on_bad_image", d.on_bad_image, f"one of {BAD_IMAGE_POLICIES}")
    _check(d.duplicates in DUPLICATE_POLICIES, "data.duplicates", d.duplicates, f"one of {DUPLICATE_POLICIES}")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0")
    if d.cache_dir is not None:
        _check(not Path(d.cache_dir).expanduser().is_file(), "data.cache_dir", d.cache_dir, "a folder, not a file")
    try:
        dicom_policy(d)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    allowed = dataset_options(d.name)
    for key in d.options:
        _check(key in allowed, f"data.options.{key}", d.options[key],
               f"a known option of '{d.name}' {sorted(allowed)}{did_you_mean(key, allowed)}")


def dicom_policy(data: DataConfig):
    """How the run reads DICOM files (:class:`riskcl.data.dicom.DicomPolicy`), from ``data.dicom``."""
    from .data.dicom import DicomPolicy

    return DicomPolicy.from_config(data.dicom)


def validate_config(cfg: ExperimentConfig) -> None:
    """Value ranges and registry look-ups; raises :class:`ConfigError` naming the key and value."""
    from .losses import check_loss_params, list_losses

    _check_top(cfg)
    _check_data(cfg.data)
    from .data.registry import dataset_task
    from .losses import loss_task

    names = list_losses(cfg.task)
    _check(cfg.loss.name in list_losses(), "loss.name", cfg.loss.name,
           f"one of {names}{did_you_mean(cfg.loss.name, names)}")
    _check(loss_task(cfg.loss.name) == cfg.task, "loss.name", cfg.loss.name,
           f"a loss of the run's task ({cfg.task}): one of {names}")
    _check(dataset_task(cfg.data.name) == cfg.task, "data.name", cfg.data.name,
           f"a data set of the run's task ({cfg.task}; set `task: {dataset_task(cfg.data.name)}` for this one)")
    _check(cfg.model.arch is None or cfg.task == "segmentation", "model.arch", cfg.model.arch,
           "null for classification (the timm model is model.name); a decoder for segmentation")
    _check_fusion(cfg)
    _check_adopt(cfg.adopt)
    try:
        check_loss_params(cfg.loss.name, cfg.loss.params)
        taxonomy = config_taxonomy(cfg)
    except ValueError as exc:
        raise ConfigError(f"`loss`: {exc}") from None
    if taxonomy is None:
        return
    try:
        cost = run_cost_matrix(cfg, taxonomy)
    except ValueError as exc:
        raise ConfigError(f"`cost`: {exc}") from None
    try:
        run_loss(cfg, taxonomy, [1] * taxonomy.num_classes, cost)
    except ValueError as exc:
        raise ConfigError(f"`loss`: {exc}") from None


def _check_fusion(cfg: ExperimentConfig) -> None:
    from .data.encoding import (ALWAYS_LABEL_DERIVED, FUSION_HEADS, METADATA_ONLY, check_metadata_spec,
                                label_derived_reason)

    m = cfg.model
    _check(m.fusion in FUSION_HEADS, "model.fusion", m.fusion, f"one of {list(FUSION_HEADS)}")
    _check(0 <= m.metadata_dropout < 1, "model.metadata_dropout", m.metadata_dropout, "in [0, 1)")
    _check(m.metadata_hidden >= 1, "model.metadata_hidden", m.metadata_hidden, "an integer >= 1")
    _check(not m.metadata or cfg.task == "classification", "model.metadata", m.metadata,
           "[] for segmentation (metadata fusion is for classification)")
    for column in m.metadata:
        _check(column not in ALWAYS_LABEL_DERIVED, "model.metadata", m.metadata,
               f"columns not derived from the label ('{column}': {label_derived_reason(column)})")
    _check(len(set(m.metadata)) == len(m.metadata), "model.metadata", m.metadata, "each column once")
    _check(m.name != METADATA_ONLY or bool(m.metadata), "model.metadata", m.metadata,
           "the columns the metadata-only reference reads (model.name: metadata-only)")
    try:
        check_metadata_spec(m.metadata_spec, m.metadata)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


ADOPT_LAYOUTS, ADOPT_CHANNELS, ADOPT_OUTPUTS, ADOPT_RESIZE = ("nchw", "nhwc"), ("rgb", "bgr", "gray"), \
    ("logits", "probs"), ("stretch", "crop")


def _check_adopt(a: AdoptConfig) -> None:
    _check(a.layout in ADOPT_LAYOUTS, "adopt.layout", a.layout, f"one of {list(ADOPT_LAYOUTS)}")
    _check(a.channels in ADOPT_CHANNELS, "adopt.channels", a.channels, f"one of {list(ADOPT_CHANNELS)}")
    _check(a.output in ADOPT_OUTPUTS, "adopt.output", a.output, f"one of {list(ADOPT_OUTPUTS)}")
    _check(a.resize in ADOPT_RESIZE, "adopt.resize", a.resize, f"one of {list(ADOPT_RESIZE)}")
    _check(a.scale in (1.0, 255.0), "adopt.scale", a.scale, "1 (pixels / 255) or 255 (raw 0..255)")
    size = a.input_size
    ok = size is None or (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096) or (
        isinstance(size, (list, tuple)) and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 4096 for v in size))
    _check(ok, "adopt.input_size", size, "null, a side in [8, 4096] or [height, width]")
    width = 1 if a.channels == "gray" else 3
    for key, value in (("adopt.mean", a.mean), ("adopt.std", a.std)):
        ok = value is None or (isinstance(value, (list, tuple)) and len(value) in (1, width)
                               and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                       for v in value))
        _check(ok, key, value, f"null or {width} finite number(s), one per channel, in the range of adopt.scale")
    _check(a.std is None or all(v > 0 for v in a.std), "adopt.std", a.std, "numbers > 0")
    _check(all(isinstance(c, str) and c for c in a.classes) and len(set(a.classes)) == len(a.classes),
           "adopt.classes", a.classes, "distinct class names")
    _check(not a.class_columns or len(a.class_columns) == len(a.classes), "adopt.class_columns", a.class_columns,
           f"one column per entry of adopt.classes ({len(a.classes)})")


def _root_required(dataset: str) -> bool:
    import inspect

    from .data.registry import DATASETS

    return inspect.signature(DATASETS[dataset]).parameters["root"].default is inspect.Parameter.empty


def config_taxonomy(cfg: ExperimentConfig):
    """The taxonomy named by ``loss.taxonomy``, the data set's built-in one, or the ``taxonomy`` option of a user's
    folder / CSV data (None when only the data knows it)."""
    from .taxonomy import list_taxonomies, load_taxonomy

    from .tasks import task_of

    if cfg.task in ("classification", "segmentation") and task_of(cfg.task).taxonomy is not None:
        return load_taxonomy(task_of(cfg.task).taxonomy)
    if cfg.loss.taxonomy is not None:
        return load_taxonomy(cfg.loss.taxonomy)
    if cfg.data.name in list_taxonomies():
        return load_taxonomy(cfg.data.name)
    if cfg.data.options.get("taxonomy") is not None:
        return load_taxonomy(cfg.data.options["taxonomy"])
    return None


def run_cost_matrix(cfg: ExperimentConfig, taxonomy) -> Any:
    """The run's clinical cost matrix (K x K numpy array, 0 for a correct decision) from the ``cost`` section."""
    from .taxonomy import resolve_cost_matrix

    return resolve_cost_matrix(taxonomy, cfg.cost.lambda1, cfg.cost.lambda2, cfg.cost.matrix, cfg.cost.within)


def run_loss(cfg: ExperimentConfig, taxonomy, class_counts, cost):
    """The run's loss module, from the ``loss`` section with the run's cost matrix, plausible costs and seed."""
    from .losses import create_loss

    return create_loss(cfg.loss.name, taxonomy=taxonomy, class_counts=class_counts, cost=cost,
                       costs=None if cfg.cost.matrix is not None else run_cost_distribution(cfg),
                       within=cfg.cost.within, seed=cfg.seed, **cfg.loss.params)


def run_cost_distribution(cfg: ExperimentConfig):
    """The run's plausible costs (:class:`riskcl.decision.costs.CostDistribution`) from ``cost.uncertain``."""
    from .decision.costs import CostDistribution

    return CostDistribution.from_config(cfg.cost.uncertain, cfg.cost.lambda1, cfg.cost.lambda2)


def save_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML text (stable key order)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _field_comments(cls: type) -> dict[str, str]:
    """The comment after each field of a config dataclass (continued on comment-only lines below it)."""
    import inspect
    import re

    out: dict[str, str] = {}
    last = None
    for line in inspect.getsource(cls).splitlines()[1:]:
        m = re.match(r"\s+(\w+):[^#]*?(?:#\s*(.*))?$", line)
        if m and not line.strip().startswith("#") and "def " not in line:
            last = m.group(1)
            out[last] = (m.group(2) or "").strip()
        elif last and line.strip().startswith("#"):
            out[last] = (out[last] + " " + line.strip().lstrip("#").strip()).strip()
        elif line.strip().startswith("def "):
            break
    return out


def config_reference() -> str:
    """``docs/CONFIG.md``: every config key with its type, default and meaning, generated from the dataclasses
    (``python -m riskcl.config > docs/CONFIG.md``; a test fails when the file and the dataclasses differ)."""
    lines = ["# Config reference", "",
             "Generated from `src/riskcl/config.py` by `python -m riskcl.config > docs/CONFIG.md`; do not edit by hand "
             "(`tests/test_config.py` checks that it matches). Any key can be set in a YAML config or on the command "
             "line as `key=value` (dotted for nested keys, values parsed as YAML).", ""]

    def section(cls: type, prefix: str) -> None:
        comments = _field_comments(cls)
        hints = typing.get_type_hints(cls)
        rows, nested = [], []
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                nested.append((hints[f.name], f"{prefix}{f.name}."))
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = str(f.type).replace("|", "or")
            rows.append(f"| `{prefix}{f.name}` | {kind} | `{default!r}` | {comments.get(f.name, '')} |")
        lines.extend([f"## `{prefix.rstrip('.') or 'top level'}`", "", "| key | type | default | meaning |",
                      "|---|---|---|---|", *rows, ""])
        for sub, p in nested:
            section(sub, p)

    section(ExperimentConfig, "")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference(), end="")
