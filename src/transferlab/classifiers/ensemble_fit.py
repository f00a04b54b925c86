"""The math of `transferlab ensemble`: combine the class probabilities of several trained runs.

Three ways, from none to most fitting: "mean" averages the members, "weighted" learns one
non-negative weight per member (summing to 1), "stack" learns a multinomial logistic regression
on the members' log-probabilities (so it can also undo a member whose classes are mixed up).
`combine` is the exact arithmetic the exported torch/ONNX graph reproduces; anything fitted is
scored out of fold (`cross_validated`), never on the images it was fitted on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold

from transferlab.errors import TransferlabError

METHODS = ("mean", "weighted", "stack", "select")
SELECT_ROUNDS = 20  # picks of greedy ensemble selection: weights in steps of 1/20
STACK_FLOOR = 1e-6  # stacking inputs are log(max(p, STACK_FLOOR)): a 0 would give -inf
NLL_CLIP = 1e-12  # the weighted fit's likelihood floor: one confidently wrong image must not give inf
# The logit of a class no fitting image belonged to: exp(-1e4 - anything sane) is exactly 0 in
# float32 and float64, so the class keeps its column but is never predicted.
ABSENT_LOGIT = -1e4
# Bounds on what a run folder may ask us to read: 256 members of 10,000 classes is far beyond any
# real ensemble, and the coefficient count cap keeps a hostile card from filling memory.
MAX_MEMBERS = 256
MAX_CLASSES = 10_000
MAX_COEF_VALUES = 4_000_000
ROW_SUM_TOLERANCE = 1e-3
# Stacking coefficients and intercepts read back: the graph runs in float32, where 1e39 is inf and
# every prediction NaN. Fitted ones are small (C <= 1); ABSENT_LOGIT is -1e4.
MAX_ABS_STACK = 1e6
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0  # exp(-3), exp(3): the weighted fit's bounds
STACK_CS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # stacking's regularisation, chosen by inner CV


@dataclass(frozen=True, eq=False)  # eq=False: == on numpy arrays has no single truth value
class Combination:
    """How to combine M members' probabilities over C classes (see `combine`)."""

    method: str
    weights: np.ndarray  # (M,) float64, >= 0, sums to 1; "stack": the equal weights 1/M (unused)
    coef: np.ndarray | None = None  # "stack" only: (C, M*C)
    intercept: np.ndarray | None = None  # "stack" only: (C,)
    # (M,) per member: its probabilities are sharpened (>1) or softened (<1) as softmax(t * log p)
    # before the weighted sum. Members differ in calibration (label smoothing leaves a fine-tuned
    # network underconfident, a logistic regression is not): without this the likelihood-optimal
    # weights favour the confident members, not the accurate ones. None: all 1 (no change).
    temperatures: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.temperatures is None:
            object.__setattr__(self, "temperatures", np.ones(len(self.weights)))
        # Frozen means frozen: own float64 copies that nobody can change under the exported graph.
        for name in ("weights", "coef", "intercept", "temperatures"):
            value = getattr(self, name)
            if value is not None:
                array = np.array(value, dtype=np.float64)
                array.setflags(write=False)
                object.__setattr__(self, name, array)

    def used(self) -> list[int]:
        """The members the combination reads: a weighted mean adds nothing of a member of weight 0
        (select never picked it); the stacker reads every member."""
        return [i for i, w in enumerate(self.weights.tolist()) if w > 0 or self.method == "stack"]

    def of_used(self) -> Combination:
        """The same combination over `used()` alone: the same output, without the unused members."""
        keep = self.used()
        if len(keep) == len(self.weights):
            return self
        return Combination(self.method, self.weights[keep], temperatures=self.temperatures[keep])

    def to_dict(self) -> dict:
        """JSON-able lists, for the run card and metrics.json."""
        return {"method": self.method, "weights": self.weights.tolist(),
                "temperatures": self.temperatures.tolist(),
                "coef": None if self.coef is None else self.coef.tolist(),
                "intercept": None if self.intercept is None else self.intercept.tolist()}

    @classmethod
    def from_dict(cls, data: dict, n_members: int, n_classes: int, where: str) -> Combination:
        """A combination read back from a run folder (hostile): every field checked, one-line errors.

        Keys other than the four fields are ignored, so a newer card stays readable.
        """
        if not isinstance(data, dict):
            raise TransferlabError(f"{where}: the combination must be a mapping")
        if not (1 <= n_members <= MAX_MEMBERS and 2 <= n_classes <= MAX_CLASSES):
            raise TransferlabError(f"{where}: an ensemble of {n_members} members over {n_classes} classes "
                                   f"is out of bounds ({MAX_MEMBERS} members, {MAX_CLASSES} classes at most)")
        method = data.get("method")
        if not isinstance(method, str) or method not in METHODS:
            raise TransferlabError(f"{where}: combination 'method' must be one of {', '.join(METHODS)}")
        weights = _numbers(data.get("weights"), (n_members,), where, "weights")
        if np.any(weights < 0) or abs(weights.sum() - 1.0) > 1e-6:
            raise TransferlabError(f"{where}: combination 'weights' must be >= 0 and sum to 1")
        temperatures = None
        if data.get("temperatures") is not None:
            temperatures = _numbers(data["temperatures"], (n_members,), where, "temperatures")
            if np.any(temperatures < MIN_TEMPERATURE) or np.any(temperatures > MAX_TEMPERATURE):
                raise TransferlabError(f"{where}: combination 'temperatures' must lie in "
                                       f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        if method != "stack":
            if data.get("coef") is not None or data.get("intercept") is not None:
                raise TransferlabError(f"{where}: combination 'coef'/'intercept' belong to 'stack' only, "
                                       f"not {method!r}")
            return cls(method, weights, temperatures=temperatures)
        width = n_members * n_classes
        if n_classes * width > MAX_COEF_VALUES:
            raise TransferlabError(f"{where}: combination 'coef' would hold {n_classes * width} numbers "
                                   f"(at most {MAX_COEF_VALUES})")
        coef = _numbers(data.get("coef"), (n_classes, width), where, "coef")
        intercept = _numbers(data.get("intercept"), (n_classes,), where, "intercept")
        if np.abs(coef).max() > MAX_ABS_STACK or np.abs(intercept).max() > MAX_ABS_STACK:
            raise TransferlabError(f"{where}: combination 'coef'/'intercept' must lie within +-{MAX_ABS_STACK:g} "
                                   "(the network runs in float32)")
        return cls(method, weights, coef, intercept)


def _numbers(value: object, shape: tuple[int, ...], where: str, field: str) -> np.ndarray:
    """A nested list of exactly `shape` finite JSON numbers, as float64; checked before numpy sees it
    (np.asarray would happily turn "1.5" strings, booleans or ragged lists into something)."""
    wanted = " x ".join(str(size) for size in shape)

    def walk(item: object, depth: int) -> None:
        if depth == len(shape):
            if type(item) not in (int, float):
                raise TransferlabError(f"{where}: combination '{field}' must hold only numbers")
            try:
                finite = math.isfinite(float(item))
            except OverflowError:  # a JSON integer too large for a float
                finite = False
            if not finite:
                raise TransferlabError(f"{where}: combination '{field}' must hold only finite numbers")
            return
        if not isinstance(item, list) or len(item) != shape[depth]:
            raise TransferlabError(f"{where}: combination '{field}' must be a {wanted} list of numbers")
        for child in item:
            walk(child, depth + 1)

    walk(value, 0)
    return np.array(value, dtype=np.float64)


def check_member_probs(member_probs: np.ndarray | Sequence[np.ndarray], labels: np.ndarray) -> None:
    """(M, n, C) probabilities with M >= 2, n >= 1, C >= 2, finite, in [0, 1], rows summing to 1;
    labels: n integers in [0, C). Also takes a list of (n, C) members, to name the one that differs."""
    if isinstance(member_probs, np.ndarray) and member_probs.ndim != 3:
        raise TransferlabError(f"member probabilities must be (members, images, classes), got shape {member_probs.shape}")
    members = [np.asarray(member) for member in member_probs]
    if len(members) < 2:
        raise TransferlabError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0].shape
    if len(first) != 2 or first[0] < 1 or first[1] < 2:
        raise TransferlabError(f"member 0's probabilities must be (images, classes >= 2), got shape {first}")
    for index, member in enumerate(members):
        if member.shape != first:
            raise TransferlabError(f"member {index}'s probabilities have shape {member.shape}, "
                                   f"member 0's have {first}: the members must score the same images and classes")
        if not np.issubdtype(member.dtype, np.number) or not np.all(np.isfinite(member)):
            raise TransferlabError(f"member {index}'s probabilities must be finite numbers")
        if np.any(member < 0) or np.any(member > 1):
            raise TransferlabError(f"member {index}'s probabilities must lie in [0, 1]")
        if np.any(np.abs(member.sum(axis=1) - 1.0) > ROW_SUM_TOLERANCE):
            raise TransferlabError(f"member {index}'s probabilities must sum to 1 on every image")
    labels = np.asarray(labels)
    n, n_classes = first
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise TransferlabError(f"the labels must be {n} integers (one per image), got shape {labels.shape} "
                               f"of {labels.dtype}")
    if np.any(labels < 0) or np.any(labels >= n_classes):
        raise TransferlabError(f"the labels must lie in [0, {n_classes})")


def stack_inputs(member_probs: np.ndarray) -> np.ndarray:
    """(M, n, C) -> (n, M*C): log(max(p, STACK_FLOOR)) of member 0's C columns, then member 1's, ..."""
    logs = np.log(np.maximum(np.asarray(member_probs, dtype=np.float64), STACK_FLOOR))
    n_members, n, n_classes = logs.shape
    return logs.transpose(1, 0, 2).reshape(n, n_members * n_classes)


def combine(combination: Combination, member_probs: np.ndarray) -> np.ndarray:
    """(M, n, C) member probabilities -> (n, C) ensemble probabilities.

    mean / weighted: sum_i w_i * softmax(t_i * log(max(p_i, NLL_CLIP))) (t_i = 1: p_i itself).
    stack: softmax(stack_inputs(p) @ coef.T + intercept).
    """
    probs = np.asarray(member_probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] != combination.weights.shape[0]:
        raise TransferlabError(f"the combination has {combination.weights.shape[0]} members, "
                               f"the probabilities have shape {probs.shape}")
    if combination.method != "stack":
        return np.tensordot(combination.weights, tempered(probs, combination.temperatures), axes=1)
    if combination.coef is None or combination.intercept is None:
        raise TransferlabError("a 'stack' combination needs its coefficients and intercept")
    if combination.coef.shape != (probs.shape[2], probs.shape[0] * probs.shape[2]):
        raise TransferlabError(f"the stacking coefficients have shape {combination.coef.shape}, "
                               f"the probabilities have shape {probs.shape}")
    logits = stack_inputs(probs) @ combination.coef.T + combination.intercept
    return softmax(logits, axis=1)


def _fit_mean(member_probs: np.ndarray, labels: np.ndarray, seed: int) -> Combination:
    return Combination("mean", _equal_weights(member_probs.shape[0]))


def tempered(member_probs: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """(M, n, C): each member's softmax(t * log p), the arithmetic the exported graph repeats."""
    logs = np.log(np.maximum(member_probs, NLL_CLIP)) * np.asarray(temperatures)[:, None, None]
    return softmax(logs, axis=2)


def _fit_weighted(member_probs: np.ndarray, labels: np.ndarray, seed: int) -> Combination:
    """Simplex weights and per-member temperatures of least mean NLL.

    w = softmax(a) keeps the weights on the simplex, t = exp(b) the temperatures positive
    (bounded to [MIN_TEMPERATURE, MAX_TEMPERATURE]); starting from a = b = 0 (the plain mean)
    makes the fit deterministic and never worse than the mean on these images.
    """
    n_members = member_probs.shape[0]
    logs = np.log(np.maximum(member_probs, NLL_CLIP))
    rows = np.arange(labels.shape[0])

    def loss(params: np.ndarray) -> float:
        weights, temperatures = softmax(params[:n_members]), np.exp(params[n_members:])
        truth = softmax(logs * temperatures[:, None, None], axis=2)[:, rows, labels]  # (M, n)
        return -float(np.mean(np.log(np.maximum(weights @ truth, NLL_CLIP))))

    bound = float(np.log(MAX_TEMPERATURE))
    bounds = [(None, None)] * n_members + [(-bound, bound)] * n_members
    result = minimize(loss, np.zeros(2 * n_members), method="L-BFGS-B", bounds=bounds)
    params = result.x if result.fun <= loss(np.zeros(2 * n_members)) else np.zeros(2 * n_members)
    weights = softmax(params[:n_members])
    temperatures = np.clip(np.exp(params[n_members:]), MIN_TEMPERATURE, MAX_TEMPERATURE)
    return Combination("weighted", weights / weights.sum(), temperatures=temperatures)


def _fit_stack(member_probs: np.ndarray, labels: np.ndarray, seed: int) -> Combination:
    """Multinomial logistic regression on the members' log-probabilities, widened to all C classes.

    Classes absent from `labels` get a zero coefficient row and the intercept ABSENT_LOGIT, so
    `combine` still returns C columns (and gives those classes probability ~0). With only two
    classes present scikit-learn fits one binary vector z; the rows -z/2, +z/2 give the same
    probabilities under the softmax. With one class present there is nothing to fit: it gets 1.
    """
    n_members, _, n_classes = member_probs.shape
    features = stack_inputs(member_probs)
    present = np.unique(labels)
    coef = np.zeros((n_classes, features.shape[1]))
    intercept = np.full(n_classes, ABSENT_LOGIT)
    if present.size == 1:
        intercept[present[0]] = 0.0
    else:
        model = LogisticRegression(C=_stack_c(features, labels, seed), solver="lbfgs", max_iter=2000,
                                   random_state=seed)
        model.fit(features, labels)
        fitted_coef, fitted_intercept = model.coef_, model.intercept_
        if present.size == 2:
            fitted_coef = np.vstack([-fitted_coef[0] / 2, fitted_coef[0] / 2])
            fitted_intercept = np.array([-fitted_intercept[0] / 2, fitted_intercept[0] / 2])
        coef[model.classes_] = fitted_coef
        intercept[model.classes_] = fitted_intercept
    return Combination("stack", _equal_weights(n_members), coef, intercept)


def _stack_c(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The stacker's regularisation, by 3-fold CV inside the images it is fitted on: M*C inputs
    per class overfit a validation set whose errors are few (C=1 lost 2 points on heritage)."""
    counts = np.unique(labels, return_counts=True)[1]
    if counts.min() < 3:
        return 0.01
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    search = LogisticRegressionCV(Cs=list(STACK_CS), cv=cv, max_iter=2000, scoring="neg_log_loss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9's notes on 1.10 defaults
        search.fit(features, labels)
    return float(np.atleast_1d(search.C_)[0])


def _fit_select(member_probs: np.ndarray, labels: np.ndarray, seed: int) -> Combination:
    """Greedy ensemble selection with replacement (Caruana et al. 2004, as AutoGluon and
    auto-sklearn weight their ensembles): add, SELECT_ROUNDS times, the member whose addition
    gives the most correct images (ties: the lower NLL), starting from the single best one;
    the weights are how often each member was picked. It aims at accuracy itself, and a
    member that only adds noise is never picked."""
    n_members = member_probs.shape[0]
    rows = np.arange(labels.shape[0])
    counts = np.zeros(n_members)
    total = np.zeros(member_probs.shape[1:])
    for _ in range(SELECT_ROUNDS):
        scores = []
        for i in range(n_members):
            mixed = (total + member_probs[i]) / (counts.sum() + 1)
            correct = int((mixed.argmax(axis=1) == labels).sum())
            nll = -float(np.mean(np.log(np.maximum(mixed[rows, labels], NLL_CLIP))))
            scores.append((correct, -nll, -i))  # more correct, then lower NLL, then the first member
        best = max(range(n_members), key=lambda i: scores[i])
        counts[best] += 1
        total += member_probs[best]
    return Combination("select", counts / counts.sum())


_FITTERS = {"mean": _fit_mean, "weighted": _fit_weighted, "stack": _fit_stack, "select": _fit_select}


def _equal_weights(n_members: int) -> np.ndarray:
    return np.full(n_members, 1.0 / n_members)


def _check_method(method: str) -> None:
    if method not in _FITTERS:
        raise TransferlabError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")


def fit_combination(method: str, member_probs: np.ndarray, labels: np.ndarray, seed: int = 0) -> Combination:
    """Fit `method` ("mean": nothing to fit, w = 1/M) on these members' probabilities and labels."""
    _check_method(method)
    check_member_probs(member_probs, labels)
    return _FITTERS[method](np.asarray(member_probs, dtype=np.float64), np.asarray(labels), seed)


def cross_validated(method: str, member_probs: np.ndarray, labels: np.ndarray, folds: int = 5,
                    seed: int = 0) -> tuple[np.ndarray, int]:
    """Out-of-fold ensemble probabilities (n, C) and the number of folds used ("mean": 0 folds).

    Each fold is scored by a combination fitted on the other folds only, so the figure is honest
    about what fitting buys. Folds are stratified, and no more than the rarest present class has images.
    """
    _check_method(method)
    check_member_probs(member_probs, labels)
    probs, labels = np.asarray(member_probs, dtype=np.float64), np.asarray(labels)
    if method == "mean":
        return combine(_fit_mean(probs, labels, seed), probs), 0
    n_folds = min(folds, int(np.unique(labels, return_counts=True)[1].min()))  # labels are never empty here
    if n_folds < 2:
        raise TransferlabError(f"too few validation images per class to cross-validate {method!r} "
                               f"({n_folds} fold(s) possible); use --method mean")
    out = np.zeros(probs.shape[1:])
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fit_rows, score_rows in splitter.split(np.zeros(labels.shape[0]), labels):
        combination = fit_combination(method, probs[:, fit_rows], labels[fit_rows], seed)
        out[score_rows] = combine(combination, probs[:, score_rows])
    return out, n_folds
