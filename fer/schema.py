"""Typed schemas of the entry configs: every value a user is likely to override, with its type and
range, checked before a stage starts, so a bad one ends the run with one line naming it.

The schemas are dataclasses (OmegaConf structured configs). The YAML files under `conf/` stay the
one source of defaults: a schema field only says what a value must be (`MISSING` default), and
keys a schema does not list (targets, schedules, Hydra's own) pass through unchecked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fer import ConfigError


def expect(description: str, ok: Callable[[Any], bool]) -> Any:
    """A required field whose value must also satisfy `ok` (`description` says what it must be)."""
    return field(default=MISSING, metadata={"expect": (description, ok)})


def positive() -> Any:
    return expect("a positive number", lambda v: v > 0)


def non_negative() -> Any:
    return expect("a number >= 0", lambda v: v >= 0)


def fraction() -> Any:
    return expect("a number in [0, 1]", lambda v: 0 <= v <= 1)


def shape(description: str, ok: Callable[[Any], bool]) -> Any:
    """A list-valued field checked by `ok` before the types (see `widths`)."""
    return field(default=MISSING, metadata={"expect": (description, ok), "shape": True})


def _is_widths(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value)


def widths(description: str, ok: Callable[[list], bool] = lambda v: True) -> Any:
    """A list of channel widths (positive integers) that must also satisfy `ok`: checked before the
    types, so that any wrong value (a string, a flat list) gets `description`."""
    return shape(description, lambda v: _is_widths(v) and ok(v))


def nested(schema: type) -> Any:
    return field(default_factory=schema)


class Balance(str, Enum):
    none = "none"
    class_weights = "class_weights"
    oversample = "oversample"
    logit_adjust = "logit_adjust"
    gan = "gan"


class TargetOf(str, Enum):
    largest = "largest"
    median = "median"


class Split(str, Enum):
    val = "val"
    test = "test"


class DataSplit(str, Enum):
    train = "train"
    val = "val"
    test = "test"


class TTA(str, Enum):
    default = "default"  # the views the checkpoint was shipped with (none when it never was)
    none = "none"
    flip = "flip"
    tencrop = "tencrop"


class ShipTTA(str, Enum):
    auto = "auto"
    none = "none"
    flip = "flip"


class AdjustmentMethod(str, Enum):
    auto = "auto"
    prior = "prior"
    bias = "bias"
    none = "none"


class AdjustmentCriterion(str, Enum):
    macro_f1 = "macro_f1"
    balanced_accuracy = "balanced_accuracy"


@dataclass
class DataLocation:
    root: str = MISSING
    cache_dir: str = MISSING


@dataclass
class Augment:
    crop_scale: list[float] = MISSING
    flip: float = fraction()
    degrees: float = non_negative()
    translate: float = fraction()
    erase: float = fraction()
    alternate_flip: bool = MISSING


@dataclass
class AlignOptions:
    min_face_size: int = positive()
    crop_upscale: int = positive()


@dataclass
class Data(DataLocation):
    batch_size: int = positive()
    eval_batch_size: int = positive()
    balance: Balance = MISSING
    align: bool = MISSING
    align_options: AlignOptions = nested(AlignOptions)
    image_size: int = expect("a crop size in pixels, 8 to 48", lambda v: 8 <= v <= 48)
    augment: Augment = nested(Augment)
    extra_train_dirs: list[str] = MISSING
    test_dir: Optional[str] = MISSING
    num_workers: int = non_negative()
    on_device: bool = MISSING


@dataclass
class Optimizer:
    lr: float = positive()
    weight_decay: float = non_negative()


@dataclass
class Net:
    dropout: float = expect("a probability in [0, 1)", lambda v: 0 <= v < 1)
    dense: int = positive()
    pool_size: int = positive()
    ceil_pool: bool = MISSING
    stages: list[list[int]] = shape("a list of stages, each a non-empty list of positive channel widths, e.g. [[16,16],[32,32]]",
                                    lambda v: isinstance(v, list) and len(v) > 0 and all(_is_widths(st) and st for st in v))


@dataclass
class Distill:
    teachers: list[str] = MISSING
    weight: float = fraction()
    temperature: float = positive()
    flip: bool = MISSING


@dataclass
class Classifier:
    net: Net = nested(Net)
    optimizer: Optimizer = nested(Optimizer)
    label_smoothing: float = expect("a number in [0, 1)", lambda v: 0 <= v < 1)
    mixup_alpha: float = non_negative()
    cutmix_alpha: float = non_negative()
    channels_last: bool = MISSING
    compile: bool = MISSING
    distill: Optional[Distill] = nested(Distill)
    init_from: Optional[str] = MISSING
    retrain_last_layer: bool = MISSING


@dataclass
class Trainer:
    max_epochs: int = expect("a number of epochs >= 1 (or -1: no limit)", lambda v: v >= 1 or v == -1)
    log_every_n_steps: int = positive()
    deterministic: bool = MISSING
    enable_progress_bar: bool = MISSING


@dataclass
class Run:
    """What every training entry has; each adds its `model`."""

    seed: int = MISSING
    data: Data = nested(Data)
    trainer: Trainer = nested(Trainer)
    ckpt_path: Optional[str] = MISSING  # a checkpoint, or "last"


@dataclass
class Train(Run):
    model: Classifier = nested(Classifier)


@dataclass
class GeneratorShape:
    latent_dim: int = positive()
    channels: list[int] = widths("three positive channel widths (6x6, 12x12, 24x24), e.g. [192,96,48]", lambda v: len(v) == 3)


@dataclass
class DiscriminatorShape:
    channels: list[int] = widths("a non-empty list of positive channel widths, e.g. [48,96,192]", lambda v: len(v) > 0)


@dataclass
class Gan:
    generator: GeneratorShape = nested(GeneratorShape)
    discriminator: DiscriminatorShape = nested(DiscriminatorShape)
    lr: float = positive()
    lr_d: float = positive()
    label_smoothing: float = expect("a number in [0, 1)", lambda v: 0 <= v < 1)
    ema_decay: Optional[float] = expect("a decay in [0, 1) or null", lambda v: 0 <= v < 1)
    aux_weight: float = non_negative()
    feature_weight: float = non_negative()


@dataclass
class TrainGan(Run):
    model: Gan = nested(Gan)


@dataclass
class GenerateOptions:
    target_share: Optional[float] = expect("a share in (0, 1] or null", lambda v: 0 < v <= 1)
    target_of: TargetOf = MISSING
    filter_min_conf: Optional[float] = expect("a confidence in [0, 1] or null", lambda v: 0 <= v <= 1)
    max_attempts_factor: int = positive()
    batch_size: int = positive()


@dataclass
class Generate:
    gan_ckpt: str = MISSING
    seed: int = MISSING
    data: DataLocation = nested(DataLocation)
    generate: GenerateOptions = nested(GenerateOptions)


@dataclass
class Quality:
    n_per_class: int = expect("at least 2 faces per class", lambda v: v >= 2)
    kid_subsets: int = positive()
    kid_subset_size: int = positive()


@dataclass
class JudgeGenerator:
    gan_ckpt: str = MISSING
    judges: list[str] = MISSING
    seed: int = MISSING
    data: Data = nested(Data)
    quality: Quality = nested(Quality)


@dataclass
class PipelineEvaluate:
    splits: list[Split] = MISSING
    grid_size: int = non_negative()


@dataclass
class Pipeline:
    seed: int = MISSING
    data: DataLocation = nested(DataLocation)
    classifier: Train = nested(Train)
    gan: TrainGan = nested(TrainGan)
    generate: GenerateOptions = nested(GenerateOptions)
    evaluate: PipelineEvaluate = nested(PipelineEvaluate)


@dataclass
class EvaluateData(DataLocation):
    test_dir: Optional[str] = MISSING
    eval_batch_size: int = positive()


@dataclass
class Evaluate:
    ckpt_path: Any = MISSING  # a checkpoint or a list of them
    split: Split = MISSING
    tta: TTA = MISSING
    adjust: bool = MISSING
    device: str = MISSING
    grid_size: int = non_negative()
    data: EvaluateData = nested(EvaluateData)


@dataclass
class Visualize:
    split: DataSplit = MISSING
    per_row: int = positive()
    augmented_rows: int = positive()
    seed: int = MISSING
    data: Data = nested(Data)


@dataclass
class ShipOnnx:
    enabled: bool = MISSING
    max_int8_accuracy_drop: float = fraction()
    min_int8_speedup: Optional[float] = expect("null or a positive number", lambda v: v is None or v > 0)
    calibration_size: int = positive()
    calibration_percentiles: list[Optional[float]] = shape(
        "a non-empty list of percentiles in (50, 100] or null (min-max ranges), e.g. [99.99,99.9]",
        lambda v: isinstance(v, list) and len(v) > 0
        and all(p is None or (isinstance(p, (int, float)) and not isinstance(p, bool) and 50 < p <= 100) for p in v))
    float_leading_convs: list[int] = shape("a non-empty list of counts >= 0 of leading convolutions kept in float, e.g. [2,1,0]",
                                           lambda v: isinstance(v, list) and len(v) > 0
                                           and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v))
    float_last_dense: bool = MISSING


@dataclass
class ShipAdjustment:
    method: AdjustmentMethod = MISSING
    criterion: AdjustmentCriterion = MISSING
    max_accuracy_drop: float = fraction()


@dataclass
class Ship:
    ckpt_path: str = MISSING
    out_dir: str = MISSING
    tta: ShipTTA = MISSING
    adjustment: ShipAdjustment = nested(ShipAdjustment)
    onnx: ShipOnnx = nested(ShipOnnx)
    data: EvaluateData = nested(EvaluateData)


@dataclass
class ShipGan:
    ckpt_path: str = MISSING
    out_dir: str = MISSING


@dataclass
class BenchSteps:
    warmup: int = non_negative()
    steps: int = positive()


@dataclass
class BenchTrain(Train):
    bench: BenchSteps = nested(BenchSteps)


@dataclass
class BenchPredict:
    checkpoint: Optional[str] = MISSING
    tta: TTA = MISSING
    batch_size: int = positive()
    seconds: float = positive()
    onnx: bool = MISSING
    data: DataLocation = nested(DataLocation)


@dataclass
class CompareFerPackage:
    tflite_model: str = MISSING
    checkpoint: Optional[str] = MISSING
    split: Split = MISSING
    batch_sizes: list[int] = widths("a non-empty list of positive batch sizes, e.g. [1,32,256]", lambda v: len(v) > 0)
    fer_package_threads: list[Optional[int]] = MISSING
    seconds: float = positive()
    data: DataLocation = nested(DataLocation)


@dataclass
class ServerPool:
    workers: int = positive()
    queue: int = non_negative()


@dataclass
class LoadServe:
    clients: int = positive()
    seconds: float = positive()
    url: Optional[str] = MISSING
    checkpoint: Optional[str] = MISSING
    face_index: int = non_negative()
    server: ServerPool = nested(ServerPool)
    data: DataLocation = nested(DataLocation)


def _type_error(error: OmegaConfBaseException) -> str:
    """OmegaConf's multi-line message -> `key=value: expected ...`."""
    first = str(error.msg).splitlines()[0]
    if converted := re.search(r"could not be converted to (\w+)", first):
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(converted[1], converted[1])
        first = f"expected {kind}"
    elif "is not a valid bool" in first:
        first = "expected true or false"
    elif choices := re.search(r"expected one of (\[.*\])", first):
        first = f"expected one of {choices[1]}"
    return f"{error.full_key}={getattr(error, 'value', '?')!r}: {first}"


def _nested_schema(f: dataclasses.Field) -> type | None:
    return f.default_factory if f.default_factory is not dataclasses.MISSING and is_dataclass(f.default_factory) else None


def _declared(schema: type, config: Any) -> Any:
    """The part of `config` (plain containers) that `schema` declares."""
    if not isinstance(config, dict):
        return config
    return {f.name: _declared(_nested_schema(f), config[f.name]) if _nested_schema(f) else config[f.name]
            for f in fields(schema) if f.name in config}


def _range_errors(schema: type, config: dict, prefix: str = "", shapes: bool = False) -> list[str]:
    """Values outside their field's range; with `shapes`, the list-valued (`shape`) fields instead,
    whatever their type."""
    errors = []
    for f in fields(schema):
        if f.name not in config:
            continue
        value, key = config[f.name], f"{prefix}{f.name}"
        checked = value is not None if shapes else isinstance(value, (int, float)) and not isinstance(value, bool)
        if "expect" in f.metadata and f.metadata.get("shape", False) == shapes and checked:
            description, ok = f.metadata["expect"]
            if not ok(value):
                errors.append(f"{key}={value!r}: expected {description}")
        elif _nested_schema(f) and isinstance(value, dict):
            errors += _range_errors(_nested_schema(f), value, f"{key}.", shapes)
    return errors


def validate(cfg: DictConfig, schema: type) -> None:
    """Raise a ConfigError naming the first value of `cfg` that `schema` refuses (its type or range)."""
    try:
        values = _declared(schema, {f.name: OmegaConf.to_container(cfg[f.name], resolve=True)
                                    if isinstance(cfg[f.name], (DictConfig, ListConfig)) else cfg[f.name]
                                    for f in fields(schema) if f.name in cfg})
        if errors := _range_errors(schema, values, shapes=True):
            raise ConfigError(errors[0])
        OmegaConf.merge(OmegaConf.structured(schema), values)
    except OmegaConfBaseException as error:
        raise ConfigError(_type_error(error)) from None
    if errors := _range_errors(schema, values):
        raise ConfigError(errors[0])
