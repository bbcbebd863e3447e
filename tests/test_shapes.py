import numpy as np
import pytest
import torch

from course_utils import shapes
from course_utils.shapes import make_scene


def test_deterministic_by_seed():
    a, b = make_scene(42), make_scene(42)
    assert a.objects == b.objects and a.captions == b.captions and a.qa == b.qa
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert make_scene(43).objects != a.objects


def test_world_has_the_promised_variety():
    objs = [o for s in range(300) for o in make_scene(s).objects]
    assert {o.shape for o in objs} == set(shapes.SHAPES) and len(shapes.SHAPES) >= 3
    assert {o.color for o in objs} == set(shapes.COLORS) and len(shapes.COLORS) >= 6
    assert {o.size for o in objs} == set(shapes.SIZES) and len(shapes.SIZES) >= 2
    assert {len(make_scene(s).objects) for s in range(100)} == {1, 2, 3, 4}


@pytest.mark.parametrize("seed", range(0, 400, 7))
def test_boxes_are_normalized_disjoint_and_match_the_pixels(seed):
    s = make_scene(seed, size=64)
    img = np.asarray(s.image).astype(int)
    bg = np.array(shapes.BACKGROUND)
    painted = np.abs(img - bg).sum(-1) > 30
    inside_any = np.zeros_like(painted)
    for i, o in enumerate(s.objects):
        x1, y1, x2, y2 = o.box
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        # anti-aliasing may tint the pixel row just outside the box edge
        inside_any[int(y1 * 64) - 1:int(np.ceil(y2 * 64)) + 1, int(x1 * 64) - 1:int(np.ceil(x2 * 64)) + 1] = True
        for p in s.objects[i + 1:]:
            q = p.box
            assert x2 <= q[0] or q[2] <= x1 or y2 <= q[1] or q[3] <= y1, "boxes overlap"
    # every painted pixel lies in some box, and every object paints its own color
    assert not (painted & ~inside_any).any()
    for o in s.objects:
        x1, y1, x2, y2 = (int(round(v * 64)) for v in o.box)
        patch = img[y1:y2, x1:x2].reshape(-1, 3)
        d = np.abs(patch - np.array(shapes.COLORS[o.color])).sum(-1)
        assert (d < 10).sum() > 10


def test_objects_stay_recognizable_at_32px():
    # small objects span at least 9 pixels, large ones at least 13, at the default size
    for o in make_scene(1, n_objects=4).objects:
        span = (o.box[2] - o.box[0]) * 32
        assert span >= (9 if o.size == "small" else 13)


@pytest.mark.parametrize("size", [32, 224])
def test_shapes_have_distinct_silhouettes(size):
    # two different shapes in the same box overlap little (IoU of their masks), at 32 px too
    masks = {}
    for shape in shapes.SHAPES:
        s = make_scene(0, size=size, objects=[{"color": "red", "shape": shape, "size": "small", "cx": 0.5, "cy": 0.5}])
        img = np.asarray(s.image).astype(int)
        masks[shape] = np.abs(img - np.array(shapes.BACKGROUND)).sum(-1) > 100
    for a in shapes.SHAPES:
        for b in shapes.SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.85, (a, b, iou)  # a circle inside its square: pi/4


def test_render_at_any_size_keeps_the_layout():
    s = make_scene(7)
    big = np.asarray(s.render(224)).astype(float)
    down = np.asarray(s.render(224).resize((32, 32))).astype(float)
    small = np.asarray(s.image).astype(float)
    assert big.shape == (224, 224, 3)
    assert np.abs(down - small).mean() < 12  # same scene, only sharper


def test_five_distinct_captions_mentioning_every_object():
    for seed in range(50):
        s = make_scene(seed)
        assert len(s.captions) == 5 and len(set(s.captions)) == 5
        first = s.captions[0].lower()
        for o in s.objects:
            assert o.color in first and o.shape in first


def test_lecture_context_formats():
    s = make_scene(3, n_objects=2)
    line = s.boxes_text()
    a, b = s.objects
    assert line == f"{a.label}: {a.box}, {b.label}: {b.box}"
    assert line.count(": [") == 2
    assert s.captions_text().count("\n") == 4
    ctx = s.context().split("\n\n")
    assert ctx[0] == s.captions_text() and ctx[1].splitlines() == [f"{o.label}: {o.box}" for o in s.objects]


def _truth(s, question):
    return next(q.answer for q in s.qa if q.question == question)


def test_qa_answers_are_true():
    kinds = set()
    for seed in range(200):
        s = make_scene(seed)
        objs = s.objects
        for q in s.qa:
            kinds.add(q.kind)
            if q.question.startswith("How many") and q.question.endswith(("objects are there?", "shapes are there?", "figures are there?")) and len(q.question.split()) == 5:
                assert q.answer == str(len(objs))
            if q.kind == "color":
                shape = q.question.split()[-1].rstrip("?")
                assert [o.color for o in objs if o.shape == shape] == [q.answer]
            if q.kind == "existence":
                words = q.question.split()
                color, shape = words[3], words[4]
                present = any(o.color == color and o.shape == shape for o in objs)
                assert q.answer == ("yes" if present else "no")
            if q.kind == "position":
                assert q.answer in [r for row in shapes.REGIONS for r in row]
    assert kinds == {"count", "color", "shape", "existence", "position", "relation"}
    # absent things are asked about
    assert any(q.kind == "existence" and q.answer == "no" for q in make_scene(0).qa)


def test_relation_is_geometric():
    s = make_scene(0, objects=[{"color": "red", "shape": "circle", "size": "small", "cx": 0.2, "cy": 0.5},
                               {"color": "blue", "shape": "square", "size": "small", "cx": 0.8, "cy": 0.5}])
    red, blue = s.objects
    assert shapes.relation(red, blue) == "to the left of" and shapes.relation(blue, red) == "to the right of"
    assert red.region == "left" and blue.region == "right"


def test_multiple_choice_variants():
    for seed in range(30):
        for q in make_scene(seed).multiple_choice:
            assert q.options is not None and len(q.options) == 4 and len(set(q.options)) == 4
            assert q.answer in "ABCD"
            truth = next(p.answer for p in make_scene(seed).qa if p.question == q.question)
            assert q.options["ABCD".index(q.answer)] == truth
            assert "A. " in q.prompt and "D. " in q.prompt


def test_splits_are_disjoint():
    ranges = {k: set(shapes.split_seeds(k, 1000)) for k in shapes.SPLITS}
    assert not ranges["train"] & ranges["val"] and not ranges["train"] & ranges["test"] and not ranges["val"] & ranges["test"]
    with pytest.raises(ValueError, match="holds"):
        shapes.split_seeds("val", 10**7)
    with pytest.raises(ValueError, match="train, val, test"):
        shapes.split_seeds("dev", 10)


def test_datasets():
    ds = shapes.ShapesCaptionDataset("val", n=8, size=32, caption=0)
    img, cap = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert cap == ds.scenes[3].captions[0]
    assert torch.equal(img, ds.scenes[3].to_tensor())
    qa = shapes.ShapesQADataset("test", n=5, kinds=["color"], multiple_choice=True)
    assert len(qa) > 0 and all(k == "color" for *_, k in (qa[i] for i in range(len(qa))))
    assert qa[0][2] in "ABCD"
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    images, captions = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and len(captions) == 4


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 4}, "size must be an int >= 8"),
    ({"n_objects": 5}, "between 1 and 4"),
    ({"n_objects": 0}, "between 1 and 4"),
    ({"objects": [("pink", "circle")]}, "unknown color 'pink'; allowed: red"),
    ({"objects": [("red", "hexagon")]}, "unknown shape 'hexagon'; allowed: circle"),
    ({"objects": [("red", "circle", "huge")]}, "unknown object size"),
    ({"objects": [("red", "circle")] * 5}, "1 to 4 objects"),
    ({"objects": [{"color": "red", "shape": "circle", "size": "large", "cx": 0.5, "cy": 0.5},
                  {"color": "red", "shape": "circle", "size": "large", "cx": 0.55, "cy": 0.5}]}, "overlaps"),
])
def test_bad_input_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scene(0, **kwargs)


def test_fixed_objects_are_used():
    s = make_scene(9, objects=[("red", "circle"), ("blue", "square", "large")])
    assert sorted(o.label for o in s.objects) == ["blue square", "red circle"]
    assert next(o for o in s.objects if o.shape == "square").size == "large"


@pytest.mark.parametrize("hw", [(32, 64), (64, 32), (48, 80)])
def test_canvas_scenes_keep_proportions_and_fill_the_canvas(hw):
    """Pixtral's canvases (notebook 06): a ``height x width`` scene draws undistorted shapes anywhere on it, its boxes
    (normalized by width and height) hold the pixels, and its answers are those of its objects."""
    h, w = hw
    xs, ys = [], []
    for seed in range(60):
        s = make_scene(seed, size=h, width=w)
        img = np.asarray(s.image).astype(int)
        assert img.shape == (h, w, 3) and s.shape_hw == (h, w) and f"{h}x{w}" in repr(s)
        painted = np.abs(img - np.array(shapes.BACKGROUND)).sum(-1) > 30
        inside_any = np.zeros_like(painted)
        for o in s.objects:
            x1, y1, x2, y2 = o.box_on(w / min(h, w), h / min(h, w))
            assert f"{o.label}: {[x1, y1, x2, y2]}" in s.boxes_text()
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            # the box is square in pixels: the shape is not stretched
            assert abs((x2 - x1) * w - (y2 - y1) * h) < 0.01 * min(h, w)
            inside_any[max(int(y1 * h) - 1, 0):int(np.ceil(y2 * h)) + 1, max(int(x1 * w) - 1, 0):int(np.ceil(x2 * w)) + 1] = True
            xs.append(o.cx)
            ys.append(o.cy)
        assert not (painted & ~inside_any).any()
    # objects spread over the whole canvas, not just its first square
    assert min(xs) < 0.25 and max(xs) > 0.75 and min(ys) < 0.25 and max(ys) > 0.75


def test_a_square_canvas_is_the_square_scene():
    a, b = make_scene(11, size=48), make_scene(11, size=48, width=48)
    assert a.objects == b.objects and b.width is None
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.qa == b.qa
    wide = make_scene(11, size=32, width=64)
    assert np.asarray(wide.render(64)).shape == (64, 128, 3)     # rendered at another height, same aspect ratio
    with pytest.raises(ValueError, match="image size"):
        make_scene(0, size=32, width=4)
    with pytest.raises(ValueError, match="does not fit"):
        make_scene(0, size=32, width=64, objects=[{"color": "red", "shape": "circle", "size": "large",
                                                    "cx": 0.05, "cy": 0.5}])
