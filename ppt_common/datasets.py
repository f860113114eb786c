"""Folders of class folders, as torchvision's ImageFolder reads them, and their classes: the one image lister.

A folder whose class folders are all ImageNet WordNet ids keeps the standard ImageNet-1k labels (the index of the
WordNet id among the 1000, whichever classes are present), so ImageNet checkpoints score it as always. Any other
folder is a dataset of its own: its classes are the sorted folder names and a label is the index in that list.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

from ppt_common.errors import UsageError
from ppt_common.imagenet import IMAGE_EXTENSIONS, NUM_CLASSES, class_names, load_synsets

SPLITS = ("train", "val")
SHOWN = 5  # names shown in a one-line summary


@dataclasses.dataclass(frozen=True)
class Classes:
    """The class of label i is names[i]: folder names, or for ImageNet the 1000 WordNet ids."""
    names: Tuple[str, ...]
    imagenet: bool = False

    @classmethod
    def of_imagenet(cls) -> "Classes":
        return cls(tuple(wnid for wnid, _ in load_synsets()), imagenet=True)

    def __len__(self) -> int:
        return len(self.names)

    def readable(self) -> List[str]:
        """What to print for each label: the folder name, or ImageNet's class name ('goldfish')."""
        return class_names() if self.imagenet else list(self.names)

    def summary(self, what: str = "classes") -> str:
        """One line: 'classes (3): cat, dog, fox' (the first few names when there are many)."""
        if self.imagenet:
            return f"{what}: ImageNet-1k ({NUM_CLASSES} WordNet ids)"
        return summarize(self.names, what)


def summarize(names: Sequence[str], what: str = "classes") -> str:
    shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else "")
    return f"{what} ({len(names)}): {shown}"


def image_root(data_path: str, split: Optional[str] = None) -> str:
    """The folder whose class folders hold the images: `data_path` as named, or, given a split, a root's
    `data_path/split` when there is one (evaluation's --data-path ROOT reads ROOT/val)."""
    if not os.path.exists(data_path):
        raise FileNotFoundError(f"data path does not exist: {data_path}")
    if not os.path.isdir(data_path):
        raise NotADirectoryError(f"data path is not a folder: {data_path}")
    if split and os.path.isdir(os.path.join(data_path, split)):
        return os.path.join(data_path, split)
    return data_path


def find_images(data_path: str, split: Optional[str] = None, limit: Optional[int] = None, labelled: bool = True
                ) -> Tuple[List[Tuple[str, int]], Classes]:
    """([(path, label)], the classes) of a folder of class folders: `data_path` as named, or with a split a root's
    `data_path/split` (image_root). The only image lister: every tool reads its images here.

    WordNet-id folders get the standard 1000-class labels; other folders are labelled by their sorted names, as
    torchvision's ImageFolder does (each class folder must hold an image). With labelled=False (a tool that reads
    no labels: the schedule search) the folder's own images and those of its subfolders are listed, sorted, each
    with label -1 and no classes: a plain folder of images will do."""
    root = image_root(data_path, split)
    if not labelled:
        return _unlabelled(root, limit), Classes(())
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise ValueError(f"{root}: no class folders (expected <class>/*.jpg, e.g. ImageNet's val/<wnid>/*.JPEG)")
    splits = [d for d in folders if d in SPLITS]
    if splits:  # a root named where its class folders were expected: say which folder to name
        raise ValueError(f"{root} holds {' and '.join(d + '/' for d in splits)} rather than class folders: name "
                         f"{os.path.join(root, splits[0])} itself")
    imagenet = Classes.of_imagenet()
    labels = {wnid: i for i, wnid in enumerate(imagenet.names)}
    classes = imagenet if all(d in labels for d in folders) else Classes(tuple(folders))
    if not classes.imagenet:
        labels = {d: i for i, d in enumerate(folders)}
    items = []
    for d in folders:
        found = [(os.path.join(root, d, f), labels[d]) for f in sorted(os.listdir(os.path.join(root, d)))
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found and not classes.imagenet:
            raise ValueError(f"{root}: class folder {d}/ holds no images ({', '.join(IMAGE_EXTENSIONS)}); each "
                             "folder is a class and needs at least one")
        items += found
    if not items:
        raise ValueError(f"{root}: class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    return (items[:limit] if limit else items), classes


def _unlabelled(root: str, limit: Optional[int]) -> List[Tuple[str, int]]:
    paths = []
    for d in [""] + sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        paths += [os.path.join(root, d, f) for f in sorted(os.listdir(os.path.join(root, d)))
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, d, f))]
    if not paths:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or in its folders")
    return [(p, -1) for p in (paths[:limit] if limit else paths)]


def same_classes(found: Sequence[Tuple[str, Classes]], what: str = "data") -> Classes:
    """The one class list of several folders [(folder, classes)]: all ImageNet, or all the same folder names."""
    first_path, first = found[0]
    for path, classes in found[1:]:
        if classes != first:
            raise UsageError(f"{what} folders name different classes: {first_path}: {first.summary()}; "
                             f"{path}: {classes.summary()}")
    return first


def check_classes(num_classes: int, data: Classes, stored: Optional[Sequence[str]]) -> Optional[str]:
    """Refuse (UsageError, before any image is read) a model that cannot score the data's labels: its stored class
    names (a training checkpoint's) must be the data's; a model without names scores ImageNet folders with an
    ImageNet-1k head, or another dataset with a head of exactly its classes (then a note says so, returned)."""
    if stored is not None:
        if data.imagenet or tuple(stored) != data.names:
            raise UsageError(f"the checkpoint's classes are not the data's: "
                             f"{summarize(list(stored), 'checkpoint classes')}; {data.summary('data classes')}")
        if num_classes < len(stored):
            raise UsageError(f"the model's head has {num_classes} classes, fewer than its {len(stored)} class names")
        return None
    if data.imagenet:
        if num_classes != NUM_CLASSES:
            raise UsageError(f"the model's head has {num_classes} classes, but the data's folders are ImageNet "
                             f"WordNet ids, scored as ImageNet-1k labels ({NUM_CLASSES} classes): use a checkpoint "
                             "with an ImageNet-1k head")
        return None
    if num_classes == NUM_CLASSES:
        raise UsageError(f"an ImageNet-1k model (a head of {NUM_CLASSES} classes, no class names) cannot score "
                         f"folders that are not ImageNet WordNet ids ({data.summary('data classes')}): fine-tune it "
                         "on them first (train_ms.py stores their names in its checkpoint)")
    if num_classes != len(data):
        raise UsageError(f"the model's head has {num_classes} classes and no class names; "
                         f"{data.summary('data classes')}")
    return (f"the checkpoint stores no class names: its {num_classes} outputs are taken to be the data's sorted "
            f"class folders ({', '.join(data.names[:SHOWN])}{', ...' if len(data) > SHOWN else ''})")
