"""Folders of class folders as torchvision's ImageFolder reads them (classes: the sorted folder names), ImageNet's
WordNet-id folders keeping the standard 1000-class labels, and the check of a model's classes against the data's."""
import pytest

from ppt_common.datasets import Classes, check_classes, find_images, same_classes
from ppt_common.errors import UsageError


def make(root, names, per_class=1):
    from PIL import Image
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (40, 30), "red").save(root / name / f"{i}.png")


def test_own_folders_are_labelled_by_their_sorted_names_as_imagefolder(tmp_path):
    make(tmp_path / "val", ["fox", "cat", "dog"], per_class=2)
    items, classes = find_images(str(tmp_path), split="val")
    assert classes == Classes(("cat", "dog", "fox")) and not classes.imagenet
    assert [(p.split("/")[-2], lbl) for p, lbl in items] == [("cat", 0), ("cat", 0), ("dog", 1), ("dog", 1),
                                                              ("fox", 2), ("fox", 2)]
    from torchvision.datasets import ImageFolder  # the reference: the same (path, label) pairs
    assert [(p, lbl) for p, lbl in ImageFolder(str(tmp_path / "val")).samples] == items


def test_one_folder_that_is_not_a_wordnet_id_makes_a_dataset_of_its_own(tmp_path):
    make(tmp_path, ["n01443537", "zebra_crossing"])
    items, classes = find_images(str(tmp_path))
    assert classes.names == ("n01443537", "zebra_crossing") and [lbl for _, lbl in items] == [0, 1]
    make(tmp_path / "inet", ["n01443537", "n15075141"])
    items, classes = find_images(str(tmp_path / "inet"))
    assert classes.imagenet and [lbl for _, lbl in items] == [1, 999]  # the standard labels, as always


def test_an_empty_class_folder_of_an_own_dataset_is_refused(tmp_path):
    make(tmp_path, ["cat"])
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="class folder dog/ holds no images"):
        find_images(str(tmp_path))


def test_summaries_are_one_line_with_the_first_names():
    assert Classes(("cat", "dog", "fox")).summary() == "classes (3): cat, dog, fox"
    many = Classes(tuple(f"c{i}" for i in range(8)))
    assert many.summary("data classes") == "data classes (8): c0, c1, c2, c3, c4, ... (3 more)"
    assert Classes.of_imagenet().summary() == "classes: ImageNet-1k (1000 WordNet ids)"
    assert Classes.of_imagenet().readable()[1] == "goldfish"


def test_several_folders_must_name_the_same_classes():
    a, b = Classes(("cat", "dog")), Classes(("cat", "dog", "fox"))
    assert same_classes([("x", a), ("y", a)]) == a
    with pytest.raises(UsageError, match=r"x: classes \(2\): cat, dog; y: classes \(3\): cat, dog, fox"):
        same_classes([("x", a), ("y", b)])


def test_a_models_classes_are_checked_against_the_data():
    own, inet = Classes(("cat", "dog")), Classes.of_imagenet()
    assert check_classes(2, own, ["cat", "dog"]) is None  # a train_ms.py checkpoint of these classes
    assert check_classes(1000, inet, None) is None  # an ImageNet checkpoint on ImageNet folders, as always
    with pytest.raises(UsageError, match=r"^the checkpoint's classes are not the data's: checkpoint classes \(3\): "
                                         r"cat, dog, fox; data classes \(2\): cat, dog$"):
        check_classes(3, own, ["cat", "dog", "fox"])
    with pytest.raises(UsageError, match=r"an ImageNet-1k model .* cannot score folders that are not ImageNet "
                                         r"WordNet ids \(data classes \(2\): cat, dog\)"):
        check_classes(1000, own, None)
    with pytest.raises(UsageError, match="checkpoint classes \\(2\\): cat, dog; data classes: ImageNet-1k"):
        check_classes(2, inet, ["cat", "dog"])
    with pytest.raises(UsageError, match="head has 2 classes, but the data's folders are ImageNet WordNet ids"):
        check_classes(2, inet, None)
    assert "stores no class names" in check_classes(2, own, None)  # e.g. a converted .pth of a fine-tune
    with pytest.raises(UsageError, match="head has 5 classes and no class names; data classes \\(2\\)"):
        check_classes(5, own, None)


def test_a_plain_folder_of_images_is_listed_unlabelled_for_tools_that_read_no_labels(tmp_path):
    from PIL import Image
    flat = tmp_path / "photos"
    flat.mkdir()
    for name in ("b.jpg", "a.PNG"):
        Image.new("RGB", (40, 30), "red").save(flat / name)
    (flat / "notes.txt").write_text("not an image")
    make(flat, ["holiday"])  # a subfolder's images count too
    items, classes = find_images(str(flat), labelled=False)
    assert items == [(str(flat / "a.PNG"), -1), (str(flat / "b.jpg"), -1), (str(flat / "holiday" / "0.png"), -1)]
    assert len(classes) == 0
    assert find_images(str(flat), labelled=False, limit=2)[0] == items[:2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        find_images(str(tmp_path / "empty"), labelled=False)
    labelled, _ = find_images(str(flat))  # labelled, the same folder is one class folder (holiday)
    assert labelled == [(str(flat / "holiday" / "0.png"), 0)]
