"""Where the federation's images come from: data sources, chosen by the task
setting ``dataset``.

Three are built in: ``mnist`` and ``fashion-mnist`` (IDX files) and
``image-folder`` (a folder of class-named subfolders of images). Installed
packages add their own through the entry-point group ``fedxai.datasets`` (see
``examples/fedxai-example-plugin``). A source reads a data-dir (empty: its
default place) into a train and a test split, or into one pool that the
federation splits itself, and names its classes in label order.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np

from fedxai.mnist import SPLITS, available_splits, load_split
from fedxai.plugins import PluginError, load_plugin, plugin_label, registry
from fedxai.settings import SettingsError

DATASET_PLUGINS = "fedxai.datasets"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class Dataset:
    """Images as (N, C, H, W) uint8 and labels as (N,) int64; greyscale (N, H, W)
    images are taken as one channel."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim == 3:
            object.__setattr__(self, "images", self.images[:, None])

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class SourceData:
    """What a source read: "train" and "test" splits, or one split, the pool."""

    splits: Mapping[str, Dataset]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class DataSource:
    """A dataset the federation can learn; what a plugin exports."""

    name: str
    # Reads a data-dir ("": the source's default place). The second argument is the
    # architecture's input shape (C, H, W), for sources whose images vary in size;
    # the federation converts channels and sizes that still differ.
    load: Callable[[str, tuple[int, int, int]], SourceData]
    description: str
    # The distribution that installed it ("name version"); empty for the built-in ones.
    provided_by: str = ""


@dataclass(frozen=True)
class IdxFiles:
    """A dataset in MNIST's IDX format, read from a folder or fetched once by torchvision."""

    title: str
    torchvision_class: str  # the torchvision.datasets class that downloads it
    cache_dir: str
    class_names: tuple[str, ...]
    # Folders a system package fills, read when no data-dir is given.
    installed_dirs: tuple[str, ...] = ()

    def load(self, data_dir: str, input_shape: tuple[int, int, int]) -> SourceData:
        directory = Path(data_dir) if data_dir else self.default_dir()
        splits = available_splits(directory) if directory.is_dir() else []
        if not splits:
            raise FileNotFoundError(
                f"data-dir {directory}: no {self.title} IDX files "
                "(t10k-/train-images-idx3-ubyte[.gz] and the matching labels)"
            )
        return SourceData({split: Dataset(*load_split(directory, split)) for split in splits}, self.class_names)

    def default_dir(self) -> Path:
        for folder in map(Path, self.installed_dirs):
            if len(available_splits(folder)) == len(SPLITS):
                return folder
        return self.download(Path(self.cache_dir).expanduser())

    def download(self, directory: Path) -> Path:
        """``directory`` holding the IDX files, downloaded by torchvision unless already there."""
        if len(available_splits(directory)) == len(SPLITS):
            return directory
        import torchvision.datasets  # only for the download: keeps node start-up light

        fetcher = getattr(torchvision.datasets, self.torchvision_class)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            for train in (True, False):
                try:
                    fetcher(root=tmp, train=train, download=True)
                except RuntimeError as error:  # torchvision's "Error downloading ..."
                    raise FileNotFoundError(
                        f"{self.title} is not in {directory} and could not be downloaded ({error}); "
                        "pass a data-dir holding the IDX files"
                    ) from None
            # Labels last: a split counts as present once its labels are, so a reader
            # never sees a split whose images are still missing.
            raw = Path(tmp) / self.torchvision_class / "raw"
            for path in sorted(raw.glob("*-ubyte.gz"), key=lambda p: "labels" in p.name):
                shutil.move(path, directory / path.name)
        return directory


MNIST = IdxFiles("MNIST", "MNIST", "~/.cache/fedxai/mnist", tuple(str(digit) for digit in range(10)))
FASHION_MNIST = IdxFiles(
    "Fashion-MNIST",
    "FashionMNIST",
    "~/.cache/fedxai/fashion-mnist",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    installed_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian's dataset-fashion-mnist
)


def load_image_folder(data_dir: str, input_shape: tuple[int, int, int]) -> SourceData:
    """ImageFolder layout: one subfolder of images per class, named by the class
    (labels follow the names' sorted order), either directly in data-dir (the pool)
    or in its ``train/`` and ``test/`` subfolders."""
    if not data_dir:
        raise FileNotFoundError("dataset image-folder needs a data-dir: a folder with one subfolder per class")
    directory = Path(data_dir)
    parts = {"train": directory / "train", "test": directory / "test"}
    if not all(folder.is_dir() for folder in parts.values()):
        parts = {"pool": directory}
    names = tuple(sorted(class_folders(parts.get("train", directory))))
    if len(names) < 2:
        raise FileNotFoundError(f"data-dir {directory}: fewer than two class folders holding images")
    label_of = {name: label for label, name in enumerate(names)}.get
    return SourceData(
        {split: read_class_folders(folder, input_shape, label_of) for split, folder in parts.items()}, names
    )


def class_folders(directory: Path) -> list[str]:
    """The subfolders of ``directory`` that hold at least one image."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder")
    return [
        folder.name
        for folder in directory.iterdir()
        if folder.is_dir() and any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.iterdir())
    ]


def read_class_folders(
    directory: Path, input_shape: tuple[int, int, int], label_of: Callable[[str], int | None]
) -> Dataset:
    """Every image in the class folders of ``directory`` that ``label_of`` knows,
    as ``input_shape`` (greyscale for one channel, RGB for three; resized)."""
    from PIL import Image  # only for folders of images

    channels, height, width = input_shape
    if channels not in (1, 3):
        raise ValueError(f"images from folders are greyscale or RGB; the architecture takes {channels} channels")
    images, labels = [], []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        label = label_of(folder.name)
        if label is None:
            raise ValueError(f"{folder}: {folder.name!r} is not one of the dataset's classes")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(path) as opened:
                image = opened.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
            images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise FileNotFoundError(f"{directory}: no PNG/JPEG/BMP/WebP images in class folders")
    return Dataset(np.stack(images), np.array(labels, dtype=np.int64))


BUILT_IN = (
    DataSource("mnist", MNIST.load, "MNIST handwritten digits (IDX files; downloaded once when no data-dir)"),
    DataSource(
        "fashion-mnist",
        FASHION_MNIST.load,
        "Zalando's Fashion-MNIST (IDX files; Debian's dataset-fashion-mnist, else downloaded once)",
    ),
    DataSource("image-folder", load_image_folder, "one subfolder of images per class, named by the class"),
)


@functools.cache
def data_sources() -> Mapping[str, DataSource]:
    """The built-in sources and every installed plugin's, by name; raises
    PluginError for the first plugin that cannot be used."""
    return registry(BUILT_IN, DATASET_PLUGINS, "dataset", _plugin)


def _plugin(entry: EntryPoint) -> DataSource:
    source, provider = load_plugin(entry, "dataset", DataSource)
    if not _NAME.fullmatch(source.name):
        raise PluginError(
            f"{plugin_label('dataset', entry)}: name {source.name!r} must be 1 to 63 lowercase letters, digits, "
            "'_' or '-', starting with a letter"
        )
    if not callable(source.load):
        raise PluginError(f"{plugin_label('dataset', entry)}: load is not callable")
    return dataclasses.replace(source, provided_by=provider)


def get_data_source(name: str) -> DataSource:
    known = data_sources()
    if name not in known:
        raise SettingsError(f"dataset={name!r} is not one of {', '.join(known)}")
    return known[name]
