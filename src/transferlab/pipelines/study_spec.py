"""A study: which settings vary, around what, with which seeds; and the variants that makes.

From the command line (`transferlab study DATA --recipe R.yaml --vary augment=none,light`) or
from a YAML spec (`transferlab study SPEC.yaml [DATA]`):

    name: augmentation alone            # optional, for the report's title
    mode: finetune                      # or probe; default: inferred (a recipe means finetune)
    recipe: ../recipes/heritage-fast.yaml   # relative to this file
    fixed: {epochs: 4}                  # set in every variant (probe settings or recipe keys)
    seeds: [0, 1]
    vary:
      augment: [none, light, classic]   # a list of values ...
      head:                             # ... or named values (name: value), for values a table
        none: []                        #     cannot show in a few characters
        dense256: [{type: dense, units: 256}, {type: dropout, p: 0.3}]
    reference: {augment: light}         # default: the recipe's own value when listed, else the first
    factorial: false                    # true: every combination instead of one factor at a time

One factor at a time (the default): the reference variant (every key at its reference value)
plus, for each key, one variant per other value. Every variant x seed is one ordinary run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import load_recipe
from transferlab.options import MAX_SEED
from transferlab.pipelines.settings import (
    MODES,
    apply_to_probe,
    apply_to_recipe,
    check_key,
    infer_mode,
    normalise_value,
    recipe_as_dict,
    slug,
    value_label,
)
from transferlab.safe_yaml import read_yaml_file, short_repr

SPEC_KEYS = ("name", "mode", "recipe", "data", "test", "baseline", "fixed", "seeds", "vary", "reference",
             "factorial")
MAX_VARIANT_RUNS = 500  # a typo in a factorial spec should not plan a year of training


@dataclass
class Factor:
    key: str
    values: list  # plain data, in the order given
    names: list[str]  # a label per value (the spec's names, else the value written short)


@dataclass
class StudySpec:
    data: str | None
    factors: list[Factor]
    mode: str = "finetune"
    recipe: str | None = None  # recipe file (finetune)
    fixed: dict = field(default_factory=dict)  # set in every variant
    seeds: list[int] = field(default_factory=lambda: [0])
    reference: dict = field(default_factory=dict)  # key -> value; see reference_values
    factorial: bool = False
    name: str = ""
    test: str | None = None
    baseline: str | None = None

    def to_dict(self) -> dict:
        """Plain data: study.json's spec, and the fingerprint a resumed study must match."""
        data = dataclasses.asdict(self)
        for key in ("data", "test", "baseline", "recipe"):
            if data[key]:
                data[key] = str(Path(data[key]).resolve())
        return json.loads(json.dumps(data))

    def fingerprint(self) -> str:
        text = json.dumps({k: v for k, v in self.to_dict().items() if k != "name"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Variant:
    index: int
    label: str  # "augment=none", or "reference", or "augment=none, lr=0.01" (factorial)
    settings: dict  # every varied key -> its value in this variant
    factor: str | None  # the key this variant changes from the reference (one-factor studies)
    value: object
    reference: bool

    def folder(self, seed: int) -> str:
        return f"v{self.index:02d}-{slug(self.label)}-seed{seed}"


def _check_seeds(seeds, where: str) -> list[int]:
    if not isinstance(seeds, list) or not seeds:
        raise TransferlabError(f"{where}: seeds must be a non-empty list of whole numbers, got {short_repr(seeds)}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise TransferlabError(f"{where}: seeds must be whole numbers from 0 to {MAX_SEED}, got {short_repr(seed)}")
    if len(set(seeds)) != len(seeds):
        raise TransferlabError(f"{where}: seeds repeat: {short_repr(seeds)}")
    return seeds


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2`."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TransferlabError(f"--seeds must be whole numbers separated by commas, got {short_repr(text)}") from None
    return _check_seeds(seeds, "--seeds")


def factor_from_values(key: str, values, where: str) -> Factor:
    """A factor from a list of values or a mapping of names to values (YAML specs)."""
    if isinstance(values, Mapping):
        names, values = [str(n) for n in values], [normalise_value(key, v) for v in values.values()]
    elif isinstance(values, list):
        values = [normalise_value(key, v) for v in values]
        names = [value_label(v, key) for v in values]
    else:
        raise TransferlabError(f"{where}: vary.{key} must be a list of values or a mapping of names to values, "
                               f"got {short_repr(values)}")
    if not values:
        raise TransferlabError(f"{where}: vary.{key} lists no values")
    if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
        raise TransferlabError(f"{where}: vary.{key} repeats a value: {short_repr(values)}")
    return Factor(key, values, names)


def load_study_spec(path: str | Path, data: str | None = None) -> StudySpec:
    """A YAML study spec; DATA given on the command line wins over the spec's `data`."""
    file = Path(path)
    where = str(file)
    raw = read_yaml_file(file, "study spec")
    if not isinstance(raw, Mapping):
        raise TransferlabError(f"{where}: a study spec is a mapping (name, recipe, vary, seeds, ...)")
    unknown = sorted(set(map(str, raw)) - set(SPEC_KEYS))
    if unknown:
        raise TransferlabError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(SPEC_KEYS)}")
    vary = raw.get("vary")
    if not isinstance(vary, Mapping) or not vary:
        raise TransferlabError(f"{where}: vary must map each varied key to its values")

    def relative(value, name: str) -> str | None:  # paths in a spec are relative to the spec file
        if value is None:
            return None
        if not isinstance(value, str):
            raise TransferlabError(f"{where}: {name} must be a path, got {short_repr(value)}")
        return str(file.parent / value) if not Path(value).is_absolute() else value

    spec = StudySpec(
        data=data or relative(raw.get("data"), "data"),
        factors=[factor_from_values(str(k), v, where) for k, v in vary.items()],
        recipe=relative(raw.get("recipe"), "recipe"),
        fixed=dict(raw.get("fixed") or {}) if isinstance(raw.get("fixed") or {}, Mapping) else _bad(where, "fixed"),
        seeds=_check_seeds(raw.get("seeds", [0]), where),
        reference=dict(raw.get("reference") or {}) if isinstance(raw.get("reference") or {}, Mapping)
        else _bad(where, "reference"),
        factorial=raw.get("factorial", False) is True,
        name=str(raw.get("name") or file.stem),
        test=relative(raw.get("test"), "test"),
        baseline=relative(raw.get("baseline"), "baseline"),
    )
    spec.mode = raw.get("mode") or infer_mode([f.key for f in spec.factors] + list(spec.fixed), bool(spec.recipe))
    if spec.data is None:
        raise TransferlabError(f"{where}: give the image folder (transferlab study {file} DATA)")
    check_spec(spec, where)
    return spec


def _bad(where: str, name: str):
    raise TransferlabError(f"{where}: {name} must be a mapping of keys to values")


def check_spec(spec: StudySpec, where: str) -> None:
    """Keys known for the mode, references among the values, a sane number of runs."""
    if spec.mode not in MODES:
        raise TransferlabError(f"{where}: mode must be one of {', '.join(MODES)}, got {short_repr(spec.mode)}")
    if spec.mode == "probe" and spec.recipe:
        raise TransferlabError(f"{where}: a recipe is for fine-tune studies; drop it or use mode finetune")
    keys = [f.key for f in spec.factors]
    if len(set(keys)) != len(keys):
        raise TransferlabError(f"{where}: a key is varied twice: {', '.join(keys)}")
    for key in keys + list(spec.fixed):
        check_key(spec.mode, key)
    for key, value in spec.reference.items():
        factor = next((f for f in spec.factors if f.key == key), None)
        if factor is None or _reference_value(factor, value) not in factor.values:
            raise TransferlabError(f"{where}: reference {key}={short_repr(value)} is not among the varied values")
    runs = len(plan_variants(spec, base_values(spec))) * len(spec.seeds)
    if runs > MAX_VARIANT_RUNS:
        raise TransferlabError(f"{where}: the study would make {runs} runs (at most {MAX_VARIANT_RUNS}); "
                               "vary fewer values or drop --factorial")


def base_values(spec: StudySpec) -> dict:
    """Each varied key's value without the study: the recipe's (finetune) or the probe default."""
    if spec.mode == "finetune":
        base = base_recipe(spec)
        result = {}
        for factor in spec.factors:
            if factor.key.startswith("stages."):
                _, k, name = factor.key.split(".")
                stages = base.get("stages")
                stage = stages[int(k) - 1] if isinstance(stages, list) and int(k) <= len(stages) else {}
                result[factor.key] = stage.get(name)
            else:
                result[factor.key] = base.get(factor.key)
        return result
    from transferlab.pipelines.probe import ProbeConfig

    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(ProbeConfig) if f.name not in ("data", "out")}
    base = apply_to_probe(defaults, spec.fixed)
    return {factor.key: base.get(factor.key) for factor in spec.factors}


def reference_values(spec: StudySpec, base: dict) -> dict:
    """The reference point: the spec's choice, else the base value when listed, else the first value."""
    result = {}
    for factor in spec.factors:
        if factor.key in spec.reference:
            result[factor.key] = _reference_value(factor, spec.reference[factor.key])
        elif base.get(factor.key) in factor.values:
            result[factor.key] = base[factor.key]
        else:
            result[factor.key] = factor.values[0]
    return result


def _reference_value(factor: Factor, given):
    """A reference given as a value, or as the name of a named value (`reference: {head: dense256}`)."""
    value = normalise_value(factor.key, given)
    if value not in factor.values and isinstance(given, str) and given in factor.names:
        return factor.values[factor.names.index(given)]
    return value


def _name(factor: Factor, value) -> str:
    return f"{factor.key}={factor.names[factor.values.index(value)]}"


def plan_variants(spec: StudySpec, base: dict) -> list[Variant]:
    """The variants, reference first."""
    ref = reference_values(spec, base)
    if spec.factorial:
        combos = list(itertools.product(*[f.values for f in spec.factors]))
        combos.sort(key=lambda combo: combo != tuple(ref[f.key] for f in spec.factors))  # reference first
        return [Variant(i, ", ".join(_name(f, v) for f, v in zip(spec.factors, combo)),
                        {f.key: v for f, v in zip(spec.factors, combo)}, None, None,
                        all(v == ref[f.key] for f, v in zip(spec.factors, combo)))
                for i, combo in enumerate(combos)]
    single = len(spec.factors) == 1
    first = spec.factors[0]
    variants = [Variant(0, _name(first, ref[first.key]) if single else "reference", dict(ref),
                        first.key if single else None, ref[first.key] if single else None, True)]
    for factor in spec.factors:
        for value in factor.values:
            if value == ref[factor.key]:
                continue
            variants.append(Variant(len(variants), _name(factor, value), {**ref, factor.key: value}, factor.key,
                                    value, False))
    return variants


def check_variants(spec: StudySpec, variants: list[Variant]) -> None:
    """Every fine-tune variant's recipe is built and validated now: one line before any run starts."""
    if spec.mode != "finetune":
        return
    base = base_recipe(spec)
    for variant in variants:
        for seed in spec.seeds:
            apply_to_recipe(base, variant.settings, seed, f"variant {variant.label}")


def base_recipe(spec: StudySpec) -> dict:
    """The recipe every variant starts from: the recipe file (or the defaults) with `fixed` set."""
    recipe = load_recipe(spec.recipe)
    return recipe_as_dict(apply_to_recipe(recipe_as_dict(recipe), spec.fixed, recipe.seed, "fixed"))
