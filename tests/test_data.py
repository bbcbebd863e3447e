import pytest
import torch
from PIL import Image

from course_utils import data


def test_shipped_photographs_load():
    names = data.list_images()
    assert {"astronaut", "coffee", "chelsea", "grace_hopper", "china", "flower"} <= set(names)
    for n in names:
        img = data.load_image(n)
        assert isinstance(img, Image.Image) and img.mode == "RGB" and min(img.size) >= 256
    assert max(data.load_image("china", size=224).size) == 224
    assert (data.DATA_DIR / "images" / "LICENSE.md").read_text().count(".jpg") >= len(names)


def test_unknown_image_lists_the_names():
    with pytest.raises(ValueError, match="available: astronaut"):
        data.load_image("lena")


def test_digits_as_tensors_with_a_fixed_stratified_split():
    x, y = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    xtr, ytr = data.load_digits("train")
    xte, yte = data.load_digits("test")
    assert len(ytr) + len(yte) == 1797
    assert 350 <= len(yte) <= 370
    # every class is in both parts, in the same proportions (stratified)
    assert torch.bincount(yte, minlength=10).min() >= 34
    tr, te = data.digits_split_indices()
    assert not set(tr.tolist()) & set(te.tolist())
    xs, _ = data.load_digits("test", scale="symmetric")
    assert torch.allclose(xs, xte * 2 - 1)
    with pytest.raises(ValueError, match="split"):
        data.load_digits("dev")
