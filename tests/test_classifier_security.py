"""Attacks on `load_classifier`: a classifier.skops is hostile until checked.

skops calls a type named in the file with arguments from the file, so every trusted name
is a function an attacker may call: the allow-set must hold exactly the nodes transferlab
heads are made of, and nothing else. (The security review's payloads, built with types skops
trusts by default, are in test_classifier_hardening.py.)
"""

from __future__ import annotations

import io
import itertools
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from transferlab.classifiers.archive import HEAD_NODES, LEGACY_NODES, node_triple, schema_nodes
from transferlab.classifiers.heads import (
    CLASSIFIERS,
    build_classifier,
    load_classifier,
    save_classifier,
)
from transferlab.errors import TransferlabError


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_per_class * n_classes, dim)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X[np.arange(len(y)), y % dim] += 5.0
    return X, y


QUICK = {"random_forest": {"n_estimators": 5}, "logreg": {"max_iter": 50}, "linear_svm": {"estimator__max_iter": 50}}


def _nodes_of(data: bytes) -> set[tuple]:
    return {node_triple(node) for node in schema_nodes(_schema_of(data))}


def _fitted_head_nodes(name: str, grid: bool, ternary: bool, X, y, labels, tmp_path: Path) -> set[tuple]:
    """The nodes of the head's file, once `load_classifier` has loaded it back unchanged."""
    model = build_classifier(name, seed=0, ternary=ternary, grid=grid, labels=labels)
    # Fewer trees, fewer iterations, same types: keeps the enumeration to seconds.
    for param, value in QUICK.get(name, {}).items():
        model.set_params(**{("classifier__estimator__" if grid else "classifier__") + param: value})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    path = tmp_path / f"{name}-{grid}-{ternary}.skops"
    save_classifier(model, path)
    assert np.array_equal(load_classifier(path).predict_proba(X), model.predict_proba(X))
    return _nodes_of(path.read_bytes())


@pytest.fixture(scope="module")
def nodes_by_head(tmp_path_factory) -> dict:
    """Every classifier x grid x ternary, on ordinary data, two classes, and the small-data regimes."""
    regimes = {"ordinary": (blobs(12), False), "two classes": (blobs(12, n_classes=2), False),
               "two per class": (blobs(2), True), "one per class": (blobs(1), True)}
    tmp_path = tmp_path_factory.mktemp("heads")
    found = {}
    # One BLAS thread: on tiny matrices, threads on a busy machine make the fits 10x slower.
    with threadpool_limits(1):
        for name, grid, ternary in itertools.product(CLASSIFIERS, (False, True), (False, True)):
            for regime, ((X, y), with_labels) in regimes.items():
                if grid and regime == "one per class":
                    continue  # refused up front (test_classifiers.py)
                found[(name, grid, ternary, regime)] = _fitted_head_nodes(name, grid, ternary, X, y,
                                                                          y if with_labels else None, tmp_path)
    return found


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_allow_set_covers_every_buildable_head(nodes_by_head, name):
    heads = [key for key in nodes_by_head if key[0] == name]
    assert len(heads) == 14  # 2 grid x 2 ternary x 4 regimes, less grid on one image per class
    for head in heads:
        assert nodes_by_head[head] <= HEAD_NODES, (head, nodes_by_head[head] - HEAD_NODES)


def test_allow_set_holds_nothing_a_head_does_not_need(nodes_by_head):
    assert set().union(*nodes_by_head.values()) == HEAD_NODES
    assert not HEAD_NODES & LEGACY_NODES
    builtins_nodes = {(loader, cls) for loader, module, cls in HEAD_NODES if module == "builtins"}
    assert builtins_nodes == {("DictNode", "dict"), ("JsonNode", "str"), ("ListNode", "list"),
                              ("TupleNode", "tuple"), ("TypeNode", "str")}  # containers, never a function
    assert not [t for t in HEAD_NODES | LEGACY_NODES if t[0] in ("FunctionNode", "MethodNode", "PartialNode",
                                                                  "OperatorFuncNode", "BytesNode", "DTypeNode")]
    assert not [t for t in HEAD_NODES | LEGACY_NODES if t[2] in ("KDTree", "BallTree")]


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
    assert _nodes_of(path.read_bytes()) - HEAD_NODES == set(LEGACY_NODES)
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
    for content in (b"", b"\x80\x04\x95 a pickle, perhaps", b"a text file\n"):
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
