"""Attacks on `load_classifier`: a classifier.skops is hostile until checked.

skops calls a type named in the file with arguments from the file, so every trusted name
is a function an attacker may call: the allow-list must hold exactly what transferlab heads
contain, and nothing else.
"""

from __future__ import annotations

import io
import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io

from transferlab.classifiers.heads import (
    CLASSIFIERS,
    TRUSTED_TYPES,
    build_classifier,
    load_classifier,
    save_classifier,
)
from transferlab.errors import TransferlabError

LEGACY = {"sklearn.model_selection._split.StratifiedKFold"}  # only in heads saved by earlier versions


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_per_class * n_classes, dim)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X[np.arange(len(y)), y % dim] += 5.0
    return X, y


def _fitted_untrusted(name: str, grid: bool, ternary: bool, X, y, labels) -> set[str]:
    model = build_classifier(name, seed=0, ternary=ternary, grid=grid, labels=labels)
    if name == "random_forest":  # fewer trees, same types: keeps the enumeration to seconds
        key = "classifier__estimator__n_estimators" if grid else "classifier__n_estimators"
        model.set_params(**{key: 5})
    model.fit(X, y)
    return set(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


@pytest.fixture(scope="module")
def untrusted_by_head() -> dict:
    """Every classifier x grid x ternary, on ordinary data and in the small-data regime."""
    regimes = {"ordinary": (blobs(12), False), "two per class": (blobs(2), True),
               "one per class": (blobs(1), True)}
    found = {}
    for name, grid, ternary in itertools.product(CLASSIFIERS, (False, True), (False, True)):
        for regime, ((X, y), with_labels) in regimes.items():
            if grid and regime == "one per class":
                continue  # refused up front (test_classifiers.py)
            found[(name, grid, ternary, regime)] = _fitted_untrusted(name, grid, ternary, X, y,
                                                                     y if with_labels else None)
    return found


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_allow_list_covers_every_buildable_head(untrusted_by_head, name, tmp_path):
    for (head, grid, ternary, regime), untrusted in untrusted_by_head.items():
        if head == name:
            assert untrusted <= TRUSTED_TYPES, (head, grid, ternary, regime, untrusted - TRUSTED_TYPES)


def test_allow_list_holds_nothing_a_head_does_not_need(untrusted_by_head):
    needed = set().union(*untrusted_by_head.values())
    assert needed == TRUSTED_TYPES - LEGACY
    assert not [t for t in TRUSTED_TYPES if t.startswith("builtins.")]


def test_a_grid_head_saved_by_an_earlier_version_still_loads(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = blobs(9)
    old = Pipeline([("scale", StandardScaler()), ("classifier", GridSearchCV(
        LogisticRegression(), {"C": [0.1, 1.0]}, cv=StratifiedKFold(3, shuffle=True, random_state=0)))]).fit(X, y)
    path = tmp_path / "old.skops"
    skops.io.dump(old, path)
    assert np.array_equal(load_classifier(path).predict_proba(X), old.predict_proba(X))


# --- hostile files --------------------------------------------------------------------------


def _schema_of(data: bytes) -> dict:
    return json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json"))


def _node(obj) -> dict:
    node = _schema_of(skops.io.dumps(obj))
    node.pop("protocol"), node.pop("_skops_version")
    return node


def _rewrite_schema(data: bytes, schema: dict) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            content = json.dumps(schema) if item == "schema.json" else source.read(item)
            target.writestr(item, content)
    return out.getvalue()


def call_node(module: str, function: str, *args) -> dict:
    """A skops node that, once loaded, is the result of `module.function(*args)`."""
    return {"__class__": function, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": _node(tuple(args))}


def plant(tmp_path: Path, payload: dict) -> Path:
    """A real head's classifier.skops with `payload` hidden as its pipeline's `memory` parameter."""
    X, y = blobs(6)
    data = skops.io.dumps(build_classifier("logreg").fit(X, y))
    schema = _schema_of(data)
    schema["content"]["content"]["memory"] = payload
    path = tmp_path / "classifier.skops"
    path.write_bytes(_rewrite_schema(data, schema))
    return path


def assert_refused(path: Path, *expected: str) -> str:
    with pytest.raises(TransferlabError) as info:
        load_classifier(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for text in expected:
        assert text in message
    return message


def runstring_payload(tmp_path: Path, marker: Path) -> Path:
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return plant(tmp_path, call_node("numpy.testing._private.utils", "runstring", code, {}))


def test_the_runstring_payload_is_live(tmp_path):
    """What the old prefix rule ("numpy." trusted) did with it: exec the attacker's code."""
    marker = tmp_path / "ran-under-the-old-rule"
    path = runstring_payload(tmp_path, marker)
    untrusted = skops.io.get_untrusted_types(file=path)
    assert untrusted == ["numpy.testing._private.utils.runstring"]
    skops.io.load(path, trusted=untrusted)
    assert marker.read_text() == "ran"


def test_runstring_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = runstring_payload(tmp_path, marker)
    assert_refused(path, "numpy.testing._private.utils.runstring")
    assert not marker.exists()


def test_payload_through_a_numpy_sklearn_or_scipy_function_is_refused(tmp_path):
    """Functions the old "numpy." / "sklearn." / "scipy." prefixes trusted, each able to write a file."""
    import importlib

    marker = tmp_path / "written.txt"
    X = [[0.0, 1.0], [1.0, 0.0]]  # plain lists: the planted node carries no .npy member
    for module, function, args in (("numpy", "save", (str(marker), [1.0])),
                                   ("sklearn.datasets", "dump_svmlight_file", (X, [0, 1], str(marker))),
                                   ("scipy.io", "savemat", (str(marker), {"a": 1}))):
        assert callable(getattr(importlib.import_module(module), function))
        path = plant(tmp_path, call_node(module, function, *args))
        assert_refused(path, f"{module}.{function}")
        assert not marker.exists()


def test_the_same_file_with_the_payload_removed_loads(tmp_path):
    """The planting keeps the file loadable: what refuses it is the payload alone."""
    path = plant(tmp_path, _node(None))
    assert load_classifier(path).predict(blobs(6)[0]).shape == (18,)


def test_type_names_from_the_file_cannot_break_the_error_line(tmp_path):
    path = plant(tmp_path, call_node("os\nsystem", "x\r\ny", "echo hi"))
    assert_refused(path, "refusing")


def test_truncated_file_is_one_line(tmp_path):
    X, y = blobs(6)
    path = tmp_path / "classifier.skops"
    save_classifier(build_classifier("logreg").fit(X, y), path)
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 10, 30):
        path.write_bytes(data[:size])
        assert_refused(path, "classifier")


def test_not_a_zip_is_one_line(tmp_path):
    path = tmp_path / "classifier.skops"
    for content in (b"", b"\x80\x04\x95 a pickle, perhaps", "a text file\n".encode()):
        path.write_bytes(content)
        assert_refused(path, "not a classifier file")


def test_zip_without_schema_or_with_broken_schema_is_one_line(tmp_path):
    path = tmp_path / "classifier.skops"
    for members in ({"readme.txt": "hello"}, {"schema.json": "{not json"}, {"schema.json": "[]"},
                    {"schema.json": json.dumps({"__class__": "dict"})}):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)
        path.write_bytes(out.getvalue())
        assert_refused(path)


def test_a_file_that_is_not_a_pipeline_is_refused(tmp_path):
    path = tmp_path / "classifier.skops"
    skops.io.dump({"classes": [1, 2]}, path)
    assert_refused(path, "not a classifier pipeline")
