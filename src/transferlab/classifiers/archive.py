"""A classifier.skops is read here, before skops sees it: size limits and an exact allow-set.

skops trusts every scikit-learn estimator and numpy ufunc by default, so its own audit lets
any scikit-learn pipeline through: a Pipeline whose joblib cache unpickles a planted file, a
CountVectorizer(input="filename") that opens host files... Here every node of schema.json,
at any depth, must be one of the (loader, module, class) triples a head built by
`build_classifier` is made of (`HEAD_NODES`, checked against every buildable head by
tests/test_classifier_security.py). skops also reads each zip member a node names, once per
node, while it builds its node tree (inside its own audit): the sizes are capped and each
member may be read once, all before skops runs.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from transferlab.errors import TransferlabError

MAX_FILE_BYTES = 1 << 30  # a 300-tree forest on 2,000 images of 10 classes is about 60 MB
MAX_UNPACKED_BYTES = 1 << 30  # all members, uncompressed: what skops may hold in memory
MAX_SCHEMA_BYTES = 64 << 20  # the same forest's schema.json is about 6 MB
MAX_DEPTH = 64  # JSON nesting; heads nest about 20 deep (skops and json recurse)
PROTOCOL = 2  # skops' node protocol: an older one would switch to other node loaders

# Every node of every head `build_classifier` makes, as (skops loader, module, class): exactly
# these, no prefix. A triple, not a type name: the loader decides what skops does with the
# node (call a function, a method, a type with arguments from the file).
HEAD_NODES = frozenset({
    ("DictNode", "builtins", "dict"),
    ("JsonNode", "builtins", "str"),
    ("ListNode", "builtins", "list"),
    ("TupleNode", "builtins", "tuple"),
    ("TypeNode", "builtins", "str"),  # a dict's key type
    ("MaskedArrayNode", "numpy.ma", "MaskedArray"),
    ("NdArrayNode", "numpy", "float64"),
    ("NdArrayNode", "numpy", "int64"),
    ("NdArrayNode", "numpy", "ndarray"),
    ("RandomStateNode", "numpy.random.mtrand", "RandomState"),
    ("ObjectNode", "sklearn.calibration", "CalibratedClassifierCV"),
    ("ObjectNode", "sklearn.calibration", "_CalibratedClassifier"),
    ("ObjectNode", "sklearn.calibration", "_SigmoidCalibration"),
    ("ObjectNode", "sklearn.ensemble._forest", "RandomForestClassifier"),
    ("ObjectNode", "sklearn.linear_model._logistic", "LogisticRegression"),
    ("ObjectNode", "sklearn.metrics._scorer", "_PassthroughScorer"),
    ("ObjectNode", "sklearn.model_selection._search", "GridSearchCV"),
    ("ObjectNode", "sklearn.neighbors._classification", "KNeighborsClassifier"),
    ("ObjectNode", "sklearn.neural_network._multilayer_perceptron", "MLPClassifier"),
    ("ObjectNode", "sklearn.neural_network._stochastic_optimizers", "AdamOptimizer"),
    ("ObjectNode", "sklearn.pipeline", "Pipeline"),
    ("ObjectNode", "sklearn.preprocessing._data", "StandardScaler"),
    ("ObjectNode", "sklearn.preprocessing._label", "LabelBinarizer"),
    ("ObjectNode", "sklearn.svm._classes", "LinearSVC"),
    ("ObjectNode", "sklearn.tree._classes", "DecisionTreeClassifier"),
    ("ObjectNode", "transferlab.classifiers.small_data", "AdaptiveFolds"),
    ("ObjectNode", "transferlab.classifiers.ternary", "TernaryDiscretizer"),
    ("TreeNode", "sklearn.tree._tree", "Tree"),  # its node indices are checked after loading
})
# Grid heads saved before AdaptiveFolds held cv=StratifiedKFold(3): runs made by earlier versions.
# (Their kNN heads on features of up to 15 dimensions held a KDTree, whose indices are never
# bounds-checked: refused, as scikit-learn picked brute force for any real backbone's features.)
LEGACY_NODES = frozenset({("ObjectNode", "sklearn.model_selection._split", "StratifiedKFold")})
ALLOWED_NODES = HEAD_NODES | LEGACY_NODES


class Refused(Exception):
    """Why a file is not loaded: one line, without the file name."""


class CheckedArchive(NamedTuple):
    data: bytes  # what was checked is what skops gets: the file is read once
    type_names: list[str]  # "module.class" of every node: all of it in ALLOWED_NODES


def _shown(node: dict) -> str:
    """A node's type for an error line: names come from the file, so ascii() keeps one line."""
    name = ascii(f"{node.get('__module__')}.{node.get('__class__')}")[1:-1]
    return f"{name} (as {ascii(node.get('__loader__'))[1:-1]})"


def schema_nodes(schema) -> Iterator[dict]:
    """Every dict with a "__loader__" anywhere in `schema`, whatever key or list holds it.

    Every dict and list is entered, not only the children a loader is known to read, so a
    node hidden under an unexpected key is seen all the same. Iterative: no recursion limit.
    """
    stack = [(schema, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Refused(f"schema.json is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            if "__loader__" in value:
                yield value
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)


def node_triple(node: dict) -> tuple:
    return node.get("__loader__"), node.get("__module__"), node.get("__class__")


def _check_node(node: dict, members: dict[str, list]) -> None:
    if node_triple(node) not in ALLOWED_NODES:
        raise Refused(f"refusing to load a type a transferlab head never holds: {_shown(node)}")
    saved_id = node.get("__id__")
    if saved_id is not None and (type(saved_id) is not int or saved_id == 0):
        raise Refused(f"malformed object id in {_shown(node)}")
    if node["__loader__"] == "NdArrayNode":
        if node.get("type") not in ("numpy", "json"):
            raise Refused(f"unknown array storage in {_shown(node)}")
        if node["type"] == "numpy":
            if not isinstance(node.get("file"), str):
                raise Refused(f"array without a file in {_shown(node)}")
            members[node["file"]].append(saved_id)


def _check_members(archive: zipfile.ZipFile, members: dict[str, list]) -> None:
    """skops reads a member for each node naming it, unless the nodes share an object id
    (it builds that node once): a member read twice is how a small file fills the memory."""
    for name, ids in members.items():
        if len(ids) > 1 and (None in ids or len(set(ids)) > 1):
            raise Refused(f"zip member {name!a} is referenced more than once")
        if name not in archive.NameToInfo:
            raise Refused(f"zip member {name!a} is missing")
        _check_npy_header(archive, name)


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_npy_header(archive: zipfile.ZipFile, name: str) -> None:
    """An .npy member declares its shape: numpy allocates that much before reading the data,
    so the shape must fit the member's size, and the dtype hold no Python objects."""
    with archive.open(name) as member:
        try:
            version = np.lib.format.read_magic(member)
            shape, _, dtype = _NPY_HEADERS[version](member, max_header_size=1 << 16)
        except (ValueError, KeyError, EOFError):
            raise Refused(f"zip member {name!a} is not a numpy array file") from None
    if dtype.hasobject or math.prod(shape) * dtype.itemsize > archive.getinfo(name).file_size:
        raise Refused(f"zip member {name!a} declares an array its size cannot hold")


def _open(data: bytes) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(data))
    infos = archive.infolist()
    if len({info.filename for info in infos}) != len(infos):
        raise Refused("the zip archive holds two members of the same name")
    unpacked = sum(info.file_size for info in infos)
    if unpacked > MAX_UNPACKED_BYTES:
        raise Refused(f"the zip archive unpacks to {unpacked} bytes (at most {MAX_UNPACKED_BYTES})")
    return archive


def _read_schema(archive: zipfile.ZipFile) -> dict:
    if "schema.json" not in archive.NameToInfo:
        raise Refused("not a skops archive (no schema.json)")
    if archive.getinfo("schema.json").file_size > MAX_SCHEMA_BYTES:
        raise Refused(f"schema.json is over {MAX_SCHEMA_BYTES} bytes")
    try:
        schema = json.loads(archive.read("schema.json"))
    except (ValueError, RecursionError) as exc:
        raise Refused(f"schema.json is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(schema, dict) or schema.get("protocol") != PROTOCOL or "__loader__" not in schema:
        raise Refused(f"schema.json is not a skops protocol {PROTOCOL} schema")
    return schema


def _read(file: Path) -> tuple[bytes, zipfile.ZipFile]:
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise Refused(f"the file is {size} bytes (at most {MAX_FILE_BYTES})")
    data = file.read_bytes()
    return data, _open(data)


def _guarded(file: Path, shown: Path, check):
    """`check(file)`, any failure one line naming `shown`."""
    try:
        return check(file)
    except Refused as exc:
        raise TransferlabError(f"{shown}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, numpy raise many types on crafted archives
        raise TransferlabError(f"{shown}: not a readable classifier file ({type(exc).__name__})") from None


def check_sizes(file: str | Path, shown: str | Path) -> None:
    """The limits `check_archive` applies, for a head just written to `file`."""
    _guarded(Path(file), Path(shown), _read)


def _checked(file: Path) -> CheckedArchive:
    data, archive = _read(file)
    schema = _read_schema(archive)
    members: dict[str, list] = defaultdict(list)
    names = set()
    for node in schema_nodes(schema):
        _check_node(node, members)
        names.add(f"{node['__module__']}.{node['__class__']}")
    _check_members(archive, members)
    return CheckedArchive(data, sorted(names))


def check_archive(file: Path) -> CheckedArchive:
    """The file's bytes, once every node is allowed and the members are within limits."""
    return _guarded(file, file, _checked)
