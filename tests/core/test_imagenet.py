"""ImageNet folders, WordNet-id labels, and the PIL eval transform (bit-identical to torchvision/timm)."""
import numpy as np
import pytest

from conftest import FOOLBOX, IMAGENET_SAMPLE, need_shared_data
from ppt_common.datasets import find_images
from ppt_common.imagenet import ImageError, load_synsets, preprocess_pil


def test_synsets_are_the_standard_sorted_1000():
    wnids = [w for w, _ in load_synsets()]
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"


def test_partial_class_folders_keep_standard_labels(tmp_path):
    from PIL import Image
    for wnid in ("n01443537", "n15075141"):  # goldfish (1) and toilet tissue (999)
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (40, 30), "red").save(tmp_path / "val" / wnid / "a.png")
    items, classes = find_images(str(tmp_path), split="val")  # an ImageNet root, as evaluation reads it
    assert [lbl for _, lbl in items] == [1, 999]
    assert classes.imagenet and len(classes) == 1000 and classes.readable()[999] == "toilet tissue"
    assert find_images(str(tmp_path / "val")) == (items, classes)


def test_a_folder_is_read_as_named_unless_a_split_is_asked_for(tmp_path):
    """Training's --train-path ROOT, ROOT holding train/ and val/, never reads ROOT/val: it is refused, naming
    the folder to give instead."""
    from PIL import Image
    for split, wnid in (("train", "n01443537"), ("val", "n15075141")):
        (tmp_path / split / wnid).mkdir(parents=True)
        Image.new("RGB", (40, 30), "red").save(tmp_path / split / wnid / "a.png")
    with pytest.raises(ValueError, match=f"holds train/ and val/ rather than class folders: name {tmp_path}/train"):
        find_images(str(tmp_path))
    assert [lbl for _, lbl in find_images(str(tmp_path), split="val")[0]] == [999]
    assert [lbl for _, lbl in find_images(str(tmp_path), split="train")[0]] == [1]


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no class folders"):
        find_images(str(tmp_path))
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="class folder cats/ holds no images"):
        find_images(str(tmp_path))


def test_corrupt_image_names_its_path(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        preprocess_pil(str(bad))


@pytest.mark.parametrize("mode, size", [("L", (300, 200)), ("CMYK", (200, 333)), ("RGBA", (64, 48)), ("P", (17, 9))])
def test_odd_modes_and_tiny_images_give_rgb_224(tmp_path, mode, size):
    from PIL import Image
    path = tmp_path / "img.png" if mode != "CMYK" else tmp_path / "img.jpg"
    Image.new(mode, size).save(path)
    assert preprocess_pil(str(path)).shape == (3, 224, 224)


def test_pil_preprocessing_is_bit_identical_to_timm_eval_transform():
    need_shared_data()
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from pt_reference.factory import build_timm_model
    from ppt_common.config import get_arch
    cfg = resolve_data_config({}, model=build_timm_model(get_arch("deit_tiny_patch16_224")))
    cfg.update(interpolation="bicubic", crop_pct=0.875)
    transform = create_transform(**cfg)
    items = find_images(IMAGENET_SAMPLE, split="val")[0][::25] + find_images(FOOLBOX, split="val")[0][:2]
    for path, _ in items:
        with Image.open(path) as img:
            expected = transform(img.convert("RGB")).numpy()
        np.testing.assert_array_equal(preprocess_pil(path), expected, err_msg=path)


def test_each_model_is_preprocessed_as_timm_prepares_it():
    """CLIP towers: OpenAI mean/std and timm's crop for the default weights, bit-identical to timm's transform."""
    need_shared_data()
    from PIL import Image
    from timm.data import create_transform
    from ppt_common.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, data_config
    from ppt_common.data import pil_preprocess
    data = data_config("vit_base_patch16_clip_224")
    assert (data.mean, data.std, data.crop_pct) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 0.95)
    transform = create_transform(input_size=(3, 224, 224), interpolation="bicubic", mean=OPENAI_CLIP_MEAN,
                                 std=OPENAI_CLIP_STD, crop_pct=0.95)
    preprocess = pil_preprocess("vit_base_patch16_clip_224")
    for path, _ in find_images(FOOLBOX, split="val")[0][:3]:
        with Image.open(path) as img:
            expected = transform(img.convert("RGB")).numpy()
        np.testing.assert_array_equal(preprocess(path), expected, err_msg=path)


def test_every_model_is_preprocessed_as_timms_default_weights_expect():
    """Each registered name's mean, std, crop and interpolation are those of timm's pretrained_cfg for that name's
    default weights (ViT: 0.5/0.5 from augreg; DeiT-III at 224: crop 0.9); only DeiT's own models keep the DeiT
    authors' crop 0.875 at 224 (timm says 0.9)."""
    from timm.models import get_pretrained_cfg
    from ppt_common.config import MODEL_CONFIGS, data_config
    from ppt_common.imagenet import default_crop_pct
    for name, arch in MODEL_CONFIGS.items():
        timm_cfg, ours = get_pretrained_cfg(name), data_config(name)
        crop = default_crop_pct(arch.img_size) if ours.crop_pct is None else ours.crop_pct
        if timm_cfg is None:  # DeiT-T/S at 384: no weights in timm; the DeiT authors' eval (the full image)
            assert name.startswith("deit_") and crop == 1.0 and ours == data_config("deit_base_patch16_384"), name
            continue
        assert tuple(ours.mean) == pytest.approx(timm_cfg.mean) and tuple(ours.std) == pytest.approx(timm_cfg.std), name
        assert ours.interpolation == timm_cfg.interpolation, name
        if name.startswith("deit_") and arch.img_size == 224:
            assert (crop, timm_cfg.crop_pct) == (0.875, 0.9), name
        else:
            assert crop == timm_cfg.crop_pct, name


def test_a_whole_image_is_told_from_a_truncated_or_foreign_file_without_decoding(tmp_path):
    from PIL import Image
    from ppt_common.imagenet import check_images, unreadable
    Image.new("RGB", (64, 48), "red").save(tmp_path / "whole.jpg", quality=90)
    Image.new("RGB", (64, 48), "blue").save(tmp_path / "whole.png")
    jpeg = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "padded.jpg").write_bytes(jpeg + b"\0" * 100)  # bytes after the end marker: still whole
    (tmp_path / "truncated.jpg").write_bytes(jpeg[:len(jpeg) - 40])
    (tmp_path / "text.jpg").write_bytes(b"<html>not found</html>")
    assert [unreadable(str(tmp_path / n)) for n in ("whole.jpg", "whole.png", "padded.jpg")] == [None] * 3
    assert unreadable(str(tmp_path / "truncated.jpg")) == "truncated JPEG (no end-of-image marker)"
    assert unreadable(str(tmp_path / "text.jpg")).startswith("UnidentifiedImageError")
    items = [(str(tmp_path / n), i) for i, n in enumerate(("whole.jpg", "text.jpg", "whole.png", "truncated.jpg"))]
    good, bad = check_images(items)
    assert good == [items[0], items[2]] and [p for p, _ in bad] == [items[1][0], items[3][0]]
