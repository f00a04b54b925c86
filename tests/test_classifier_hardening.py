"""The security review's payloads against `load_classifier`: each built here, each refused in one line.

Every payload below uses only types skops trusts by default (or that a transferlab head holds),
so skops' own audit passes them all; the tests named `..._is_live` show what they do when
loaded without transferlab's checks. Payloads that hang or crash the interpreter when they
predict are loaded in a child process, so a regression fails the test instead of the run.
"""

from __future__ import annotations

import glob
import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from transferlab.classifiers import archive
from transferlab.classifiers.heads import build_classifier, load_classifier
from transferlab.errors import TransferlabError

DIM = 8


def blobs(n_per_class: int = 6, n_classes: int = 3, dim: int = DIM, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_per_class * n_classes, dim)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), n_per_class)
    X[np.arange(len(y)), y % dim] += 5.0
    return X, y


def dump(model, path: Path) -> Path:
    skops.io.dump(model, path)  # not save_classifier: an attacker writes the file as they like
    return path


def head(name: str = "logreg", **params) -> Pipeline:
    model = build_classifier(name, seed=0)
    model.set_params(**params)
    return model.fit(*blobs())


def assert_refused(path: Path, *expected: str) -> str:
    with pytest.raises(TransferlabError) as info:
        load_classifier(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for text in expected:
        assert text in message, message
    return message


def trusting_skops(path: Path):
    """What skops alone loads: every type it reports as untrusted, trusted."""
    return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))


# --- S1: code execution through a joblib cache --------------------------------------------------


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def joblib_chain(tmp_path: Path) -> tuple[Path, Path]:
    """scaler(inf) -> isnan -> StackingClassifier(stack_method_=["fit"]) -> Pipeline(memory=cache):
    predicting fits the inner pipeline, whose cache lookup unpickles the planted output.pkl."""
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression

    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    scale = StandardScaler().fit(np.random.default_rng(0).normal(size=(4, DIM)))
    scale.mean_[:] = np.inf
    scale.scale_[:] = np.inf
    isnan = FunctionTransformer(np.isnan).fit(np.zeros((2, DIM)))
    stack = StackingClassifier([("lr", LogisticRegression())], final_estimator=LogisticRegression(), cv=3)
    stack.fit(*blobs(3, dim=DIM))
    inner = Pipeline([("t", StandardScaler()), ("p", "passthrough")], memory=str(cache))
    stack.estimators_, stack.stack_method_ = [inner], ["fit"]
    del stack.named_estimators_
    path = dump(Pipeline([("scale", scale), ("iz", isnan), ("classifier", stack)]), tmp_path / "rce.skops")
    inner.fit(np.isnan(np.full((1, DIM), np.nan)))  # the cache entry a one-image prediction looks up
    [output] = glob.glob(f"{cache}/**/output.pkl", recursive=True)
    Path(output).write_bytes(pickle.dumps(Payload(marker)))
    return path, marker


def test_the_joblib_chain_is_live(tmp_path):
    path, marker = joblib_chain(tmp_path)
    with pytest.raises(TypeError):  # exec returns None where the cached (X, fitted step) belongs
        trusting_skops(path).predict_proba(np.random.rand(1, DIM))
    assert marker.read_text() == "ran"


def test_the_joblib_chain_is_refused_and_never_runs(tmp_path):
    path, marker = joblib_chain(tmp_path)
    assert_refused(path, "refusing to load a type a transferlab head never holds", "(as ObjectNode)")
    assert not marker.exists()


# --- S1b: reading host files through CountVectorizer(input="filename") ---------------------------


def file_read_chain(tmp_path: Path, secret: Path) -> Path:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression

    scale = StandardScaler().fit(np.random.default_rng(0).normal(size=(4, DIM)))
    scale.mean_[:] = np.inf
    scale.scale_[:] = np.inf
    to_object = FunctionTransformer(np.positive, kw_args={"dtype": "O"}).fit(np.zeros((2, DIM)))
    impute = SimpleImputer(strategy="constant", fill_value=str(secret)).fit(np.full((2, DIM), np.nan, dtype=object))
    fake = StandardScaler()
    fake.kind = "f"
    impute._fit_dtype, impute._fill_dtype = fake, "O"
    impute.statistics_ = np.array([str(secret)] * DIM, dtype=object)
    words = {word: tmp_path / f"{word}.txt" for word in ("alpha", "omega")}
    for word, file in words.items():
        file.write_text(word)
    columns = ColumnTransformer([("read", CountVectorizer(input="filename"), 0)])
    counts = columns.fit_transform(np.array([[str(file)] * DIM for file in words.values()], dtype=object))
    classifier = LogisticRegression(C=100).fit(counts, [0, 1])
    pipeline = Pipeline([("scale", scale), ("obj", to_object), ("impute", impute), ("cols", columns),
                         ("classifier", classifier)])
    return dump(pipeline, tmp_path / "read.skops")


def test_the_file_read_chain_is_live(tmp_path):
    secret = tmp_path / "secret.txt"
    loaded = trusting_skops(file_read_chain(tmp_path, secret))
    for content, expected in (("alpha alpha", 0), ("omega omega", 1)):
        secret.write_text(content)
        assert loaded.predict(np.random.rand(1, DIM)).tolist() == [expected]


def test_the_file_read_chain_is_refused(tmp_path):
    path = file_read_chain(tmp_path, tmp_path / "secret.txt")
    message = assert_refused(path, "refusing to load a type a transferlab head never holds")
    assert any(name in message for name in ("FunctionTransformer", "SimpleImputer", "ColumnTransformer",
                                            "CountVectorizer", "numpy.positive"))


# --- S3: trees and neighbour indices that scikit-learn follows unchecked ------------------------


def _tree_nodes(model: Pipeline, change) -> Pipeline:
    for tree in model[-1].estimators_:
        state = tree.tree_.__getstate__()
        nodes = state["nodes"].copy()
        change(nodes)
        state["nodes"] = nodes
        tree.tree_.__setstate__(state)
    return model


def _second_split(nodes) -> int:
    return int(np.flatnonzero(nodes["left_child"] != -1)[1])


TREE_EDITS = {
    "loop": lambda n: n[0].__setitem__("left_child", 0) or n[0].__setitem__("right_child", 0),
    "out of range": lambda n: n[0].__setitem__("left_child", 1 << 40) or n[0].__setitem__("right_child", 1 << 40),
    "back to the root": lambda n: n[_second_split(n)].__setitem__("right_child", 0),
    "negative child": lambda n: n[0].__setitem__("left_child", -7),
    "feature out of range": lambda n: n[0].__setitem__("feature", 1 << 40),
    "leaf with a child": lambda n: n[np.flatnonzero(n["left_child"] == -1)[0]].__setitem__("right_child", 0),
}


def forest(edit) -> Pipeline:
    model = head("random_forest", classifier__n_estimators=2, classifier__n_jobs=1)
    for tree in model[-1].estimators_:  # every edit needs two splits, so a cycle can go back up
        assert (tree.tree_.children_left != -1).sum() >= 2
    return _tree_nodes(model, edit)


def knn_with_kd_tree() -> Pipeline:
    """A kNN head as "auto" made it on features of up to 15 dimensions, its KDTree's indices crafted."""
    from sklearn.neighbors import KDTree

    model = head("knn", classifier__algorithm="kd_tree")
    tree = model[-1]._tree
    state = list(tree.__getstate__())
    state[1] = np.full_like(state[1], 1 << 40)  # idx_array: indices into the data, never bounds-checked
    tree.__setstate__(tuple(state))
    assert isinstance(tree, KDTree)
    return model


def knn_labels_out_of_range() -> Pipeline:
    model = head("knn", classifier__weights="uniform")
    model[-1]._y = np.full_like(model[-1]._y, 1 << 40)
    return model


CHILD = """
import sys
import numpy as np
from transferlab.classifiers.heads import load_classifier
from transferlab.errors import TransferlabError
for path in sys.argv[1:]:
    try:
        load_classifier(path).predict_proba(np.zeros((1, {dim}), dtype=np.float32))
        print("LOADED", path, flush=True)
    except TransferlabError as exc:
        print("REFUSED", exc, flush=True)
"""


def run_child(code: str, paths: list[Path]) -> subprocess.CompletedProcess:
    """A child process: a loop without the GIL or a segfault there cannot take the tests down."""
    return subprocess.run([sys.executable, "-c", code.format(dim=DIM), *map(str, paths)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_an_out_of_range_tree_is_live(tmp_path):
    path = dump(forest(TREE_EDITS["out of range"]), tmp_path / "oob.skops")
    child = run_child("import sys, numpy as np, skops.io\n"
                      "p = sys.argv[1]; m = skops.io.load(p, trusted=skops.io.get_untrusted_types(file=p))\n"
                      "m.predict_proba(np.zeros((1, {dim}), dtype=np.float32)); print('survived')", [path])
    assert child.returncode < 0 and "survived" not in child.stdout  # killed by a signal


def test_crafted_trees_and_neighbour_indices_are_refused_without_hang_or_crash(tmp_path):
    payloads = {f"tree {name}": forest(edit) for name, edit in TREE_EDITS.items()}
    payloads["kd tree"] = knn_with_kd_tree()
    payloads["knn labels"] = knn_labels_out_of_range()
    paths = [dump(model, tmp_path / f"{name}.skops") for name, model in payloads.items()]
    child = run_child(CHILD, paths)  # a hang fails here: subprocess.TimeoutExpired
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    assert len(lines) == len(paths)
    for line, path in zip(lines, paths):
        assert line.startswith(f"REFUSED {path}: "), line
    for line in lines[:len(TREE_EDITS)]:
        assert ".tree_: a tree" in line or ".tree_: not a single-output" in line, line
    assert "sklearn.neighbors._kd_tree.KDTree (as ObjectNode)" in lines[-2]
    assert "labels are not class indices" in lines[-1]


def test_kd_tree_heads_are_no_longer_built(tmp_path):
    model = head("knn")
    assert model[-1].algorithm == "brute" and model[-1]._tree is None
    assert np.array_equal(load_classifier(dump(model, tmp_path / "knn.skops")).predict(blobs()[0]), blobs()[1])


# --- S4: the archive itself -----------------------------------------------------------------------


def write_zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name, content in members.items():
            target.writestr(name, content)
    return path


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def schema(node: dict) -> str:
    return json.dumps({**node, "protocol": 2, "_skops_version": "0.16.0"})


ARRAY = {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy", "file": "z.npy"}


def listing(*content) -> dict:
    return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": list(content)}


def test_one_member_read_many_times_is_refused_before_skops_reads_it(tmp_path):
    # 1,000 nodes naming one 1 MiB member: skops would hold 1 GiB for a file of a few KB.
    path = write_zip(tmp_path / "bomb.skops", {"schema.json": schema(listing(*[ARRAY] * 1000)),
                                               "z.npy": npy(np.zeros(1 << 20, dtype=np.uint8))})
    assert path.stat().st_size < 64 << 10
    assert_refused(path, "zip member 'z.npy' is referenced more than once")


def test_one_member_shared_by_one_object_is_read_once_and_allowed(tmp_path):
    shared = {**ARRAY, "__id__": 7}
    path = write_zip(tmp_path / "shared.skops", {"schema.json": schema(listing(shared, shared)),
                                                 "z.npy": npy(np.arange(3.0))})
    assert_refused(path, "not a classifier pipeline")  # past the archive checks and skops


@pytest.mark.parametrize("limit", ["MAX_FILE_BYTES", "MAX_UNPACKED_BYTES", "MAX_SCHEMA_BYTES"])
def test_size_limits(tmp_path, monkeypatch, limit):
    path = dump(head(), tmp_path / "classifier.skops")
    load_classifier(path)
    monkeypatch.setattr(archive, limit, 1000)
    assert_refused(path, "at most 1000" if limit != "MAX_SCHEMA_BYTES" else "schema.json is over 1000 bytes")


def test_an_array_larger_than_its_member_is_refused(tmp_path):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (4000000000,), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64
    path = write_zip(tmp_path / "shape.skops", {"schema.json": schema(ARRAY), "z.npy": data})
    assert_refused(path, "declares an array its size cannot hold")


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_nesting_is_one_line(tmp_path, depth):
    nested = "[" * depth + "]" * depth
    text = schema(listing()).replace('"content": []', f'"content": [{nested}]')
    path = write_zip(tmp_path / "deep.skops", {"schema.json": text})
    assert_refused(path, "schema.json")


def test_an_older_protocol_is_refused(tmp_path):
    path = write_zip(tmp_path / "old.skops", {"schema.json": schema(listing()).replace('"protocol": 2', '"protocol": 1')})
    assert_refused(path, "not a skops protocol 2 schema")


# --- the loaded head's structure: allowed types, assembled otherwise ---------------------------


def _with(model, **changes):
    for dotted, value in changes.items():
        *owners, attribute = dotted.split(".")
        target = model
        for owner in owners:
            target = target.named_steps[owner] if isinstance(target, Pipeline) else getattr(target, owner)
        setattr(target, attribute, value)
    return model


STRUCTURES = {
    "a joblib cache": (lambda: _with(head(), memory="/tmp"), "memory"),
    "a thread per estimator": (lambda: _with(head("random_forest", classifier__n_estimators=2),
                                             **{"classifier.n_jobs": 10**6}), "n_jobs=1000000"),
    "an infinite mean": (lambda: _with(head(), **{"scale.mean_": np.full(DIM, np.inf)}), "not finite"),
    "a text mean": (lambda: _with(head(), **{"scale.mean_": np.array(["a"] * DIM)}), "an array of dtype"),
    "a function as a parameter": (lambda: _with(head(), **{"classifier.tol": np.isnan}), "numpy.isnan"),
    "an extra step": (lambda: Pipeline([("scale", StandardScaler()), ("again", StandardScaler()),
                                        ("classifier", build_classifier().steps[-1][1])]).fit(*blobs()),
                      "not a transferlab head"),
    "weights of the wrong shape": (lambda: _with(head(), **{"classifier.coef_": np.zeros((3, DIM + 1))}),
                                   "shape (3, 9)"),
    "an unknown activation": (lambda: _with(head("mlp"), **{"classifier.activation": "exp"}), "activation"),
    "another metric": (lambda: _with(head("knn"), **{"classifier.effective_metric_": "manhattan"}), "metric"),
    "a scaler without a scaler": (lambda: Pipeline([("scale", build_classifier().steps[-1][1])]).fit(*blobs()),
                                  "not a transferlab head"),
}


@pytest.mark.parametrize("case", list(STRUCTURES))
def test_allowed_types_in_another_structure_are_refused(tmp_path, case):
    build, expected = STRUCTURES[case]
    path = dump(build(), tmp_path / "classifier.skops")
    assert_refused(path, expected)


# --- heads written by earlier versions ------------------------------------------------------------


def test_heads_of_earlier_versions_still_load(tmp_path):
    """Calibration with cv=3, grid search with StratifiedKFold, kNN with algorithm "auto" (on
    features of more than 15 dimensions, as any backbone's, scikit-learn searched by brute force)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    X, y = blobs(9, dim=32)
    estimators = {
        "svm": CalibratedClassifierCV(LinearSVC(C=0.01, random_state=0, max_iter=5000), cv=3),
        "grid": GridSearchCV(CalibratedClassifierCV(LinearSVC(random_state=0), cv=3), {"estimator__C": [0.01, 1.0]},
                             cv=StratifiedKFold(3, shuffle=True, random_state=0), n_jobs=1),
        "knn": KNeighborsClassifier(n_neighbors=7, weights="distance"),
    }
    for name, estimator in estimators.items():
        old = Pipeline([("scale", StandardScaler()), ("classifier", estimator)]).fit(X, y)
        loaded = load_classifier(dump(old, tmp_path / f"{name}.skops"))
        assert np.array_equal(loaded.predict_proba(X), old.predict_proba(X)), name


def test_an_earlier_knn_head_with_a_kd_tree_is_refused_in_one_line(tmp_path):
    path = dump(head("knn", classifier__algorithm="auto"), tmp_path / "knn.skops")  # 8 dimensions: a KDTree
    assert_refused(path, "sklearn.neighbors._kd_tree.KDTree")
