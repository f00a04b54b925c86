"""Finding copies: byte-identical files (content hash) and near-duplicates (perceptual hashes).

Near-duplicates (a resized, re-encoded or re-saved copy) are found with ImageHash's pHash and
dHash, 64 bits each: two images are near-duplicates when both hashes differ in at most
`max_distance` bits. Requiring both cuts the false matches either one alone makes on
simple, similar-looking images.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from transferlab.data.images import file_digest

# Default largest Hamming distance (of 64 bits, on both hashes) for a near-duplicate. Resized
# and JPEG re-encoded copies of photo-like images mostly differ by 0-4 bits; distinct images
# that merely look alike can too (about 1 pair in 12,000 among the elpv solar cells), so
# near-duplicates are reported for review, apart from byte-identical copies.
NEAR_DISTANCE = 4
# Rows compared at once: bounds the temporary arrays to a few tens of MB for 100k images.
_BLOCK_ELEMENTS = 4_000_000
_POPCOUNT = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def digests_of_possible_duplicates(paths: Iterable[Path]) -> tuple[dict[Path, str], list[tuple[Path, str]]]:
    """Content digests of the files whose byte size another file shares (a unique size has no twin).

    Returns the digests and the files that could not be read, with a reason.
    """
    by_size: dict[int, list[Path]] = defaultdict(list)
    failed: list[tuple[Path, str]] = []
    for path in paths:
        try:
            by_size[path.stat().st_size].append(path)
        except OSError as exc:
            failed.append((path, f"cannot read: {exc.strerror or exc}"))
    digests: dict[Path, str] = {}
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        for path in same_size:
            try:
                digests[path] = file_digest(path)
            except OSError as exc:
                failed.append((path, f"cannot read: {exc.strerror or exc}"))
    return digests, failed


def exact_groups(paths: Iterable[Path], digests: dict[Path, str]) -> list[list[Path]]:
    """Groups of >=2 byte-identical files among `paths`, each sorted, ordered by first path."""
    by_digest: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        if path in digests:
            by_digest[digests[path]].append(path)
    return sorted(sorted(group) for group in by_digest.values() if len(group) > 1)


def duplicate_keys(paths: Iterable[Path]) -> dict[Path, Hashable]:
    """For the split: a group key for every file that has a byte-identical copy among `paths`.

    Unreadable files get no key; they fail (and are listed) when decoded.
    """
    paths = list(paths)
    digests, _ = digests_of_possible_duplicates(paths)
    return {path: digests[path] for group in exact_groups(paths, digests) for path in group}


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """pHash and dHash of a decoded image, packed as two uint64 words."""
    bits = np.concatenate([imagehash.phash(image).hash.ravel(), imagehash.dhash(image).hash.ravel()])
    return np.packbits(bits).view(">u8").astype(np.uint64)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (numpy >= 2 has it built in; a byte table otherwise)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    return _POPCOUNT[words.view(np.uint8)].reshape(*words.shape, 8).sum(axis=-1, dtype=np.uint8)


def _distances(block: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Per pair of rows, the larger of the two hashes' Hamming distances: shape (len(block), len(others))."""
    phash = _popcount(block[:, None, 0] ^ others[None, :, 0])
    dhash = _popcount(block[:, None, 1] ^ others[None, :, 1])
    return np.maximum(phash, dhash)


def near_pairs(
    hashes: np.ndarray, others: np.ndarray | None = None, max_distance: int = NEAR_DISTANCE
) -> list[tuple[int, int, int]]:
    """(i, j, distance) for rows within `max_distance` bits on both hashes.

    Without `others`, pairs within `hashes` with i < j; with it, every (row of hashes, row of others).
    """
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, 2)
    within = others is None
    others = hashes if within else np.asarray(others, dtype=np.uint64).reshape(-1, 2)
    if not len(hashes) or not len(others):
        return []
    rows = max(1, _BLOCK_ELEMENTS // len(others))
    pairs = []
    for start in range(0, len(hashes), rows):
        block = hashes[start:start + rows]
        first = start if within else 0  # within one set only the upper triangle is compared
        distance = _distances(block, others[first:])
        close = distance <= max_distance
        if within:
            close &= np.arange(first, len(others))[None, :] > np.arange(start, start + len(block))[:, None]
        for i, j in zip(*np.nonzero(close)):
            pairs.append((start + int(i), first + int(j), int(distance[i, j])))
    return pairs


def connected_groups(items: list, pairs: Iterable[tuple[int, int]]) -> list[list]:
    """Groups (>=2 items) joined by `pairs` of indices, transitively; each in the order of `items`."""
    pairs = list(pairs)
    if not pairs:
        return []
    rows, cols = zip(*pairs)
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(items), len(items)))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list] = defaultdict(list)
    for item, label in zip(items, labels):
        members[int(label)].append(item)
    return [group for group in members.values() if len(group) > 1]
