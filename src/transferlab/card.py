"""The model card: model/model.json, typed, versioned, written once and read once.

Every run kind writes one (`ModelCard.write`), and every consumer (predict, explain, embed,
export, serve, compare) reads it through `runs.open_run`, which checks it as hostile input:
a wrong type would otherwise surface as a traceback deep inside a loader. Version 1 cards
(written before the version field existed) hold the same keys and load as they are.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.atomic import write_json
from transferlab.errors import TransferlabError
from transferlab.options import MAX_RESOLUTION, MIN_RESOLUTION, TTA_MODES, tta_mode

CARD_VERSION = 3  # 3: tta is a mode name (was true/false), the ensemble kind
MODEL_KINDS = ("probe", "finetune", "ensemble")
INFERENCE_PRECISIONS = ("fp32", "bf16")
# Fields that belong to one kind of run only: a card omits the other kind's.
_KIND_FIELDS = {"probe": ("layers", "pool"), "finetune": ("head", "cut_after"),
                "ensemble": ("members", "combination")}
# The files each kind's loader reads from its model folder: all that a fingerprint hashes and
# all that an ensemble copies of a member, so a stray (or huge, or linked) file is never read.
KIND_FILES = {"probe": ("model.json", "backbone.safetensors", "classifier.skops"),
              "finetune": ("model.json", "network.safetensors"), "ensemble": ("model.json",)}
MODEL_FILES = tuple(dict.fromkeys(name for names in KIND_FILES.values() for name in names))
MAX_MEMBERS = 16  # an ensemble loads every member: more is a mistake or an attack on memory
MAX_GROUP_NAME = 200  # a block group name ("blocks.4", "layer3"); longer is not a name but an attack


@dataclass(frozen=True)
class ModelCard:
    """What rebuilding a run's model needs, with no dependency on the data it was trained on."""

    # "probe" (backbone.safetensors + classifier.skops), "finetune" (network.safetensors) or
    # "ensemble" (model/members/<name>/, each a probe or fine-tuned model, and a combination)
    kind: str
    classes: list[str]
    backbone: str  # timm architecture name
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    weights_source: str = "run"  # where the backbone's starting weights came from (packaged, hub, file, random)
    weights_id: str | None = None
    precision: str = "fp32"  # of extraction / training
    inference_precision: str = "fp32"  # of every inference path (see precision.INFERENCE_PRECISION)
    layers: list[str] = field(default_factory=list)  # probe: pooled layers
    pool: str = "avg"  # probe
    head: list[dict] = field(default_factory=list)  # finetune: the head spec
    # Test-time augmentation its predictions use by default (a data.tta mode; predict, serve and
    # export may ask for another). Cards before version 3 held true/false: flip / none.
    tta: str = "none"
    # finetune: the backbone was cut after this block group (`transferlab prune`); None: the whole
    # backbone. Loaders check it names a group the architecture can be cut after.
    cut_after: str | None = None
    # ensemble: the member folders under model/members/, and how their probabilities combine
    # (method and weights; checked by the ensemble loader, which knows the shapes).
    members: list[str] = field(default_factory=list)
    combination: dict = field(default_factory=dict)
    version: int = CARD_VERSION

    def to_dict(self) -> dict:
        """The card as model.json holds it: only the fields of its own kind."""
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        for kind, names in _KIND_FIELDS.items():
            for name in names if kind != self.kind else ():
                data.pop(name)
        if data.get("cut_after", "") is None:
            data.pop("cut_after")  # an uncut network's card reads as it did before pruning existed
        if data["tta"] == "none":
            data.pop("tta")  # the default: a card without TTA reads as it did before modes existed
        return data

    def write(self, model_dir: Path) -> None:
        write_json(Path(model_dir) / "model.json", self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "ModelCard":
        """Check every field's type and range; one line naming the file and field otherwise."""
        version = data.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version > CARD_VERSION:
            raise TransferlabError(f"{where}: model card version {version!r} is newer than this transferlab "
                                   f"understands ({CARD_VERSION}); upgrade transferlab")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("kind", "backbone"):
            _require(isinstance(values.get(name), str), where, name, "a string")
        _require(values["kind"] in MODEL_KINDS, where, "kind", f"one of {', '.join(MODEL_KINDS)}")
        classes = values.get("classes")
        _require(isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
                 and len(set(classes)) == len(classes), where, "classes", "at least 2 distinct class names")
        resolution = values.get("resolution")
        _require(_is_int(resolution) and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION, where, "resolution",
                 f"a whole number in {MIN_RESOLUTION}..{MAX_RESOLUTION}")
        for name in ("mean", "std"):
            triple = values.get(name)
            ok = isinstance(triple, list) and len(triple) == 3 and all(_is_number(v) for v in triple)
            _require(ok and (name == "mean" or min(triple) > 0), where, name,
                     "3 numbers" + (" above 0" if name == "std" else ""))
            values[name] = tuple(float(v) for v in triple)
        _check_optional(values, where)
        values["version"] = CARD_VERSION
        return cls(**values)


def _check_optional(values: dict, where: str) -> None:
    for name in ("interpolation", "weights_source", "precision", "pool"):
        if name in values:
            _require(isinstance(values[name], str), where, name, "a string")
    if "inference_precision" in values:
        _require(values["inference_precision"] in INFERENCE_PRECISIONS, where, "inference_precision",
                 f"one of {', '.join(INFERENCE_PRECISIONS)}")
    if values.get("weights_id") is not None:
        _require(isinstance(values["weights_id"], str), where, "weights_id", "a string")
    if "layers" in values:
        _require(isinstance(values["layers"], list) and all(isinstance(v, str) for v in values["layers"]),
                 where, "layers", "a list of layer names")
    if "head" in values:
        _require(isinstance(values["head"], list) and all(isinstance(v, dict) for v in values["head"]),
                 where, "head", "a list of layers")
    if "tta" in values:
        _require(values["tta"] in TTA_MODES or isinstance(values["tta"], bool), where, "tta",
                 f"true, false or one of {', '.join(TTA_MODES)}")
        values["tta"] = tta_mode(values["tta"])
    if values.get("cut_after") is not None:
        cut = values["cut_after"]
        _require(values["kind"] == "finetune" and isinstance(cut, str) and 0 < len(cut) <= MAX_GROUP_NAME
                 and cut.isprintable(), where, "cut_after", "a block group name (fine-tuned runs only)")
    if values["kind"] == "probe":
        _require(bool(values.get("layers")), where, "layers", "a non-empty list for a probe")
    if values["kind"] == "ensemble":
        members = values.get("members")
        # One is allowed: an ensemble keeps only the members its combination uses (select may pick one).
        _require(isinstance(members, list) and 1 <= len(members) <= MAX_MEMBERS
                 and all(isinstance(m, str) for m in members) and len(set(members)) == len(members),
                 where, "members", f"1 to {MAX_MEMBERS} distinct member names")
        _require(isinstance(values.get("combination"), dict), where, "combination", "an object")


def _require(ok: bool, where: str, name: str, what: str) -> None:
    if not ok:
        raise TransferlabError(f"{where}: field '{name}' must be {what}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite JSON number: json.loads reads NaN, Infinity and integers no float holds."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
