"""Settings a study or a search changes: one key = one value, applied to a probe or a recipe.

A study's `--vary KEY=V1,V2` and a search space name the same keys:

- probe runs: the `ProbeConfig` fields in `PROBE_KEYS` (backbone, layers, classifier, ...);
- fine-tune runs: every recipe key (backbone, augment, head, label_smoothing, ...) and one
  field of one stage, `stages.K.FIELD` (K counts from 1), when the recipe lists its stages.

Values are YAML scalars or flow collections, so `--vary 'layers=[head],[stage-2,head]'` and
`--vary 'head=[],[{type: dropout, p: 0.5}]'` say what a spec file would. A few words stand
for "not set" (`per_class=all`, `resolution=auto`). Everything is checked here, before any
image is read: an unknown key, a bad value or a stage that does not exist is one line.
"""

from __future__ import annotations

import copy
import dataclasses
import re

from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import Recipe, Stage, recipe_from_saved
from transferlab.safe_yaml import parse_yaml, short_repr

MODES = ("probe", "finetune")

# ProbeConfig fields a variant may change. Not the data, the output or the seed (a study
# has --seeds), nor workers/progress (how a run executes, not what it computes). The engine
# is here as precision is: bf16 rounds differently in torch and OpenVINO, so a study may compare them.
PROBE_KEYS = ("backbone", "weights", "classifier", "grid", "ternary", "layers", "pool", "resolution",
              "precision", "engine", "batch_size", "val_fraction", "per_class", "train_per_class")
RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "seed")
STAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Stage))
_STAGE_KEY = re.compile(r"^stages\.(\d+)\.(\w+)$")

# Words that mean "not set" for these keys (their default: all images, size from the images).
UNSET_WORDS = {"per_class": "all", "train_per_class": "all", "resolution": "auto"}


def check_key(mode: str, key: str) -> None:
    """One line naming the key when `mode` runs have no such setting."""
    if mode not in MODES:
        raise TransferlabError(f"mode must be one of {', '.join(MODES)}, got {short_repr(mode)}")
    if mode == "probe" and key in PROBE_KEYS:
        return
    if mode == "finetune" and (key in RECIPE_KEYS or _stage_key(key) is not None):
        return
    known = PROBE_KEYS if mode == "probe" else RECIPE_KEYS + ("stages.K.FIELD",)
    raise TransferlabError(f"{key!r} is not a {mode} setting; {mode} settings: {', '.join(known)}")


def infer_mode(keys: list[str], has_recipe: bool) -> str:
    """finetune when a recipe is given or a key exists only in recipes; probe otherwise."""
    if has_recipe:
        return "finetune"
    if any(k not in PROBE_KEYS for k in keys):
        return "finetune"
    return "probe"


def parse_values(key: str, text: str) -> list:
    """`V1,V2,...` of `--vary KEY=...` as a list of plain values (one YAML flow sequence)."""
    values = parse_yaml(f"[{text}]", f"--vary {key}")
    if not isinstance(values, list) or not values:
        raise TransferlabError(f"--vary {key}: give one or more values, e.g. {key}=A,B")
    return [normalise_value(key, v) for v in values]


def parse_vary(text: str) -> tuple[str, list]:
    """`KEY=V1,V2` -> (KEY, [V1, V2])."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise TransferlabError(f"--vary must look like KEY=V1,V2 (e.g. augment=none,light), got {short_repr(text)}")
    return key, parse_values(key, values)


def normalise_value(key: str, value):
    """The words in UNSET_WORDS become None (the default); everything else stays as given."""
    if isinstance(value, str) and UNSET_WORDS.get(key) == value.strip().lower():
        return None
    return value


def value_label(value, key: str | None = None) -> str:
    """A short, readable label of a value for tables and folder names (None: the key's unset word)."""
    if value is None:
        return UNSET_WORDS.get(key or "", "default")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return short_repr(value).replace("'", "")
    return str(value)


def slug(text: str, limit: int = 60) -> str:
    """Folder-name-safe form of a label: letters, digits, '.', '-', '_' and '='."""
    cleaned = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-.") or "x"
    return cleaned[:limit]


def _stage_key(key: str) -> tuple[int, str] | None:
    match = _STAGE_KEY.match(key)
    if match is None:
        return None
    index, field = int(match.group(1)), match.group(2)
    if field not in STAGE_FIELDS:
        raise TransferlabError(f"{key!r}: stages have no field {field!r}; fields: {', '.join(STAGE_FIELDS)}")
    if index < 1:
        raise TransferlabError(f"{key!r}: stages count from 1")
    return index, field


def apply_to_recipe(base: dict, settings: dict, seed: int, where: str) -> Recipe:
    """A validated Recipe: the base recipe (as a dict of its keys) with `settings` and `seed` set."""
    data = copy.deepcopy(base)
    for key, value in settings.items():
        check_key("finetune", key)
        stage = _stage_key(key)
        if stage is None:
            data[key] = copy.deepcopy(value)
            continue
        index, field = stage
        stages = data.get("stages")
        if not isinstance(stages, list):
            raise TransferlabError(f"{where}: {key} needs a recipe whose stages are a list, "
                                   f"not the preset {short_repr(stages)}")
        if index > len(stages):
            raise TransferlabError(f"{where}: {key}: the recipe has {len(stages)} stages")
        stages[index - 1] = {**stages[index - 1], field: copy.deepcopy(value)}
    data["seed"] = seed
    return recipe_from_saved(data, where)


def apply_to_probe(base: dict, settings: dict) -> dict:
    """ProbeConfig keyword arguments: the base with `settings` set (checked by the probe itself)."""
    result = copy.deepcopy(base)
    for key, value in settings.items():
        check_key("probe", key)
        if key == "layers" and isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        result[key] = copy.deepcopy(value)
    return result


def recipe_as_dict(recipe: Recipe) -> dict:
    """A Recipe's keys as plain data (stages left as the recipe gives them: preset or list)."""
    return dataclasses.asdict(recipe)
