"""Read FER-2013 into uint8 tensors, from the Kaggle folders or the original CSV.

Each split is decoded once and cached on disk (keyed by its source), so later epochs and later
runs never decode an image again. Official protocol: Training trains, PublicTest selects (val),
PrivateTest reports (test).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from fer import EMOTIONS, FERError

log = logging.getLogger(__name__)

IMAGE_SIZE = 48
SPLIT_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
"""Our split names and the FER-2013 `Usage` (and file-name prefix) behind each."""
CSV_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""The label order of the original fer2013.csv (0=Angry ... 6=Neutral)."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff"}
CACHE_VERSION = 1


@dataclass
class Split:
    """One split: `images` (N, 48, 48) uint8, `labels` (N,) int64, `key` names its content;
    after alignment, `found` (N,) bool marks the images in which a face was found."""

    images: torch.Tensor
    labels: torch.Tensor
    key: str
    found: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=len(EMOTIONS))

    @staticmethod
    def concat(splits: list[Split]) -> Split:
        return Split(
            torch.cat([s.images for s in splits]),
            torch.cat([s.labels for s in splits]),
            _digest(*(s.key for s in splits)),
        )


def load_split(root: str | Path, split: str, cache_dir: str | Path) -> Split:
    """The `split` ("train", "val" or "test") of the FER-2013 copy at `root` (folders or CSV)."""
    if split not in SPLIT_USAGE:
        raise FERError(f"unknown split {split!r}: expected one of {sorted(SPLIT_USAGE)}")
    root = Path(root).expanduser().resolve()
    csv_path = root if root.suffix == ".csv" else root / "fer2013.csv"
    if csv_path.is_file():
        return _load_csv_split(csv_path, split, Path(cache_dir))
    if (root / "train").is_dir() or (root / "test").is_dir():
        folder = root / ("train" if split == "train" else "test")
        prefix = None if split == "train" else SPLIT_USAGE[split]
        if split == "val" and not _has_split_prefixes(folder):
            log.warning("%s has no PublicTest_/PrivateTest_ file names: all of it is the val split", folder)
            prefix = None
        return load_image_folder(folder, cache_dir, prefix=prefix, dataset_root=root)
    raise FERError(
        f"no FER-2013 found at {root}: put the Kaggle folders train/ and test/ or fer2013.csv there "
        "(see README), or point data.root (or FER2013_ROOT) at it"
    )


def load_image_folder(
    folder: str | Path,
    cache_dir: str | Path,
    prefix: str | None = None,
    dataset_root: str | Path | None = None,
) -> Split:
    """All images in `folder`/<class>/ (only files named `prefix`_* when a prefix is given)."""
    folder = Path(folder).expanduser().resolve()
    files, labels = _list_class_folders(folder, prefix)
    if not files:
        wanted = f" named {prefix}_*" if prefix else ""
        hint = f"; the {prefix} split is missing from this copy of FER-2013" if prefix == "PrivateTest" else ""
        raise FERError(f"no images{wanted} in the class folders of {folder}{hint}")
    stats = [f.stat() for f in files]
    listing = "\n".join(f"{f.relative_to(folder)}:{s.st_size}:{s.st_mtime_ns}" for f, s in zip(files, stats))
    key = _digest("folder", str(folder), prefix or "", listing)
    return _cached(
        Path(cache_dir), dataset_root or folder, f"{folder.name}-{prefix or 'all'}", key,
        lambda: {"images": decode_images(files), "labels": torch.tensor(labels, dtype=torch.int64)},
    )


def decode_images(files: list[Path]) -> torch.Tensor:
    """Decode image files to (N, 48, 48) uint8 grayscale, converting colour and other sizes."""

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                image = image.convert("L")
                if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
                return np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise FERError(f"cannot read image {path}: {error}") from error

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        arrays = list(pool.map(decode, files, chunksize=256))
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)


def read_csv(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Parse fer2013.csv into {Usage: (images, labels)}; a bad row raises naming its line."""
    columns = ("emotion", "pixels", "Usage")
    images: dict[str, list[np.ndarray]] = {usage: [] for usage in SPLIT_USAGE.values()}
    labels: dict[str, list[int]] = {usage: [] for usage in SPLIT_USAGE.values()}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:3]) != columns:
            raise FERError(f"{path} line 1: expected the header emotion,pixels,Usage, got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 3:
                raise FERError(f"{path} line {line}: expected 3 fields (emotion,pixels,Usage), got {len(row)}")
            emotion, pixels, usage = (field.strip() for field in row)
            if usage not in images:
                raise FERError(f"{path} line {line}: unknown Usage {usage!r}, expected one of {list(images)}")
            if emotion not in {str(i) for i in range(len(CSV_EMOTIONS))}:
                raise FERError(f"{path} line {line}: bad emotion label {emotion!r}, expected 0-6")
            try:
                values = np.array(pixels.split(), dtype=np.int64)
            except ValueError as error:
                raise FERError(f"{path} line {line}: pixels are not integers ({error})") from error
            if values.size != IMAGE_SIZE * IMAGE_SIZE or values.min() < 0 or values.max() > 255:
                raise FERError(
                    f"{path} line {line}: expected {IMAGE_SIZE * IMAGE_SIZE} pixel values in 0-255, "
                    f"got {values.size}"
                )
            images[usage].append(values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
            labels[usage].append(EMOTIONS.index(CSV_EMOTIONS[int(emotion)]))
    return {
        usage: (torch.from_numpy(np.stack(images[usage])), torch.tensor(labels[usage], dtype=torch.int64))
        for usage in images
        if images[usage]
    }


def _load_csv_split(path: Path, split: str, cache_dir: Path) -> Split:
    """One split of the CSV; a cache miss parses the CSV once and caches every split in it."""
    stat = path.stat()
    source_key = _digest("csv", str(path), str(stat.st_size), str(stat.st_mtime_ns))
    usage = SPLIT_USAGE[split]
    parsed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def parse(wanted: str) -> dict[str, torch.Tensor]:
        if not parsed:
            parsed.update(read_csv(path))
        if wanted not in parsed:
            raise FERError(f"{path} has no rows with Usage {wanted}: the {wanted} split is missing")
        images, labels = parsed[wanted]
        return {"images": images, "labels": labels}

    result = _cached(cache_dir, path.parent, f"csv-{usage}", _digest(source_key, usage), lambda: parse(usage))
    for other in set(parsed) - {usage}:  # the CSV was parsed just now: cache its other splits too
        _cached(cache_dir, path.parent, f"csv-{other}", _digest(source_key, other), lambda: parse(other))
    return result


def aligned_split(split: Split, cache_dir: str | Path, dataset_root: str | Path, **options: Any) -> Split:
    """`split` with every face aligned by `FaceAligner(**options)`, computed once and cached.

    Where no face is found the original crop is kept; `found` records which.
    """

    def align() -> dict[str, torch.Tensor]:
        from fer.data.align import FaceAligner  # facenet-pytorch loads only when alignment is asked for

        images, found = FaceAligner(**options).align_crops(split.images, progress=True)
        return {"images": images, "labels": split.labels, "found": found}

    key = _digest(content_digest(split), "aligned", repr(sorted(options.items())))
    result = _cached(Path(cache_dir), dataset_root, "aligned", key, align)
    missed = int((~result.found).sum())
    log.info("alignment: no face found in %d of %d images (%.1f %%); their original crops are kept",
             missed, len(result), 100 * missed / max(len(result), 1))
    return result


def content_digest(split: Split) -> str:
    """A digest of the pixels and labels themselves. Aligned faces are keyed on it rather than on the
    source's file times, so a copy of the dataset that was re-mounted or re-extracted (same faces,
    new times) decodes again in seconds but never re-aligns (minutes)."""
    digest = hashlib.sha1(repr((tuple(split.images.shape), split.images.dtype, split.labels.dtype)).encode())
    for tensor in (split.images, split.labels):
        digest.update(memoryview(tensor.contiguous().numpy()))
    return digest.hexdigest()


def _list_class_folders(folder: Path, prefix: str | None) -> tuple[list[Path], list[int]]:
    if not folder.is_dir():
        raise FERError(f"missing folder {folder}: expected one subfolder per emotion {list(EMOTIONS)}")
    files, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if class_dir.name.lower() not in EMOTIONS:
            raise FERError(f"unknown class folder {class_dir}: expected one of {list(EMOTIONS)}")
        label = EMOTIONS.index(class_dir.name.lower())
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES and (prefix is None or file.name.startswith(prefix + "_")):
                files.append(file)
                labels.append(label)
    return files, labels


def _has_split_prefixes(folder: Path) -> bool:
    prefixes = tuple(f"{usage}_" for usage in ("PublicTest", "PrivateTest"))
    return folder.is_dir() and any(f.name.startswith(prefixes) for f in folder.glob("*/*"))


def _cached(
    cache_dir: Path,
    dataset_root: Path | str,
    name: str,
    key: str,
    build: Callable[[], dict[str, torch.Tensor]],
) -> Split:
    """Load `name`-`key` from the cache, or build it and write it atomically."""
    cache_dir = cache_dir.expanduser().resolve()
    if cache_dir.is_relative_to(Path(dataset_root).resolve()):
        raise FERError(f"data.cache_dir {cache_dir} is inside the dataset folder {dataset_root}: nothing is written there")
    path = cache_dir / f"{name}-{key[:16]}.pt"
    if path.is_file():
        return Split(**torch.load(path, weights_only=True), key=key)
    log.info("building %s (first use; cached at %s)", name, path)
    tensors = build()
    save_atomic(tensors, path)
    return Split(**tensors, key=key)


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path) -> None:
    """`save_atomic` for text files (JSON reports, model cards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join((str(CACHE_VERSION), *parts)).encode()).hexdigest()
