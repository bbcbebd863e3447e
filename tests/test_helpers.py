import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from course_utils import plotting, shapes, training, widgets


def test_show_images_and_errors():
    imgs = [shapes.make_scene(i).image for i in range(5)] + [torch.rand(1, 8, 8)]
    fig = plotting.show_images(imgs, captions=[str(i) for i in range(6)], ncols=3)
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="6 images but 2 captions"):
        plotting.show_images(imgs, captions=["a", "b"])
    plt.close("all")


def test_boxes_land_on_the_objects():
    s = shapes.make_scene(4, n_objects=2)
    ax = plotting.show_scene(s, size=224)
    rects = [p for p in ax.patches]
    assert len(rects) == 2
    for r, o in zip(rects, s.objects):
        assert r.get_x() == pytest.approx(o.box[0] * 224 - 0.5)
        assert r.get_width() == pytest.approx((o.box[2] - o.box[0]) * 224)
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        plotting.draw_boxes(s.image, [[0, 0, 1]])
    plt.close("all")


def test_heatmap():
    ax = plotting.plot_heatmap(torch.eye(3), ["a", "b", "c"], ["x", "y", "z"], annotate=True)
    assert np.array_equal(ax.images[0].get_array(), np.eye(3))
    with pytest.raises(ValueError, match="2-D"):
        plotting.plot_heatmap(torch.zeros(2, 2, 2))
    plt.close("all")


def test_train_loop_fits_a_line(monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    x = torch.linspace(-1, 1, 64)[:, None]
    y = 3 * x + 0.5
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    hist = training.train_loop(model, [(x, y)], lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), opt, 200,
                               scheduler=training.cosine_schedule(opt, 200, warmup=5))
    assert len(hist.loss) == 200 and hist.loss[-1] < 1e-4
    assert abs(model.weight.item() - 3) < 1e-2 and not model.training
    with pytest.raises(ValueError, match="empty"):
        training.train_loop(model, [], lambda m, b: b, opt, 1)
    with pytest.raises(RuntimeError, match="loss became nan"):
        training.train_loop(model, [0], lambda m, b: torch.tensor(float("nan"), requires_grad=True), opt, 1)


def test_progress_is_off_when_headless(monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    assert training.progress(range(3)).disable
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    monkeypatch.delenv("CI", raising=False)
    assert not training.progress(range(3)).disable


def test_interact_draws_the_default_when_headless(monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    seen = []
    widgets.interact(lambda seed, t: seen.append((seed, t)), seed=widgets.int_slider(3, 0, 10), t=0.5)
    assert seen == [(3, 0.5)]
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    monkeypatch.delenv("CI", raising=False)
    w = widgets.interact(lambda seed: seen.append(seed), seed=widgets.int_slider(4, 0, 10))
    assert seen[-1] == 4 and w is not None


def test_the_chat_widget_answers_headless_and_interactive(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    shown, asked = [], []

    def answer(item, question):
        asked.append((item, question))
        return f"{item}!"

    assert widgets.chat(answer, {"uno": 1, "dos": 2}, shown.append, ["a?", "b?"]) is None
    assert shown == [1] and asked == [(1, "a?"), (1, "b?")]
    assert "[uno] vos: a?" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least one option"):
        widgets.chat(answer, {}, shown.append, ["a?"])
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    monkeypatch.delenv("CI", raising=False)
    ui = widgets.chat(answer, {"uno": 1, "dos": 2}, shown.append, ["a?"])
    pick, _, (box, send), _ = ui.children[0], ui.children[1], ui.children[2].children, ui.children[3]
    pick.value = "dos"                      # another scene: redrawn
    send.click()                            # the suggested question about it
    assert shown[-1] == 2 and asked[-1] == (2, "a?")


def test_figures_are_legible_on_a_projector():
    """Every text the plotting helpers draw is at least MIN_FONTSIZE, even when asked for less."""
    import course_utils

    course_utils.setup(quiet=True)
    s = shapes.make_scene(3, n_objects=3)
    figs = [plotting.show_images([s.image] * 3, captions=["a", "b", "c"], fontsize=5),
            plotting.draw_boxes(s.image, [o.box for o in s.objects], ["x"] * 3, fontsize=6).figure,
            plotting.show_scene(s).figure,
            plotting.plot_heatmap(torch.rand(3, 3), list("abc"), list("xyz"), annotate=True, title="t").figure,
            plotting.plot_curves({"a": [3, 2, 1], "b": [2, 2, 1]}).figure]
    for fig in figs:
        fig.canvas.draw()
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip() and t.get_visible()]
        assert texts
        small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < plotting.MIN_FONTSIZE]
        assert not small, f"text below {plotting.MIN_FONTSIZE} pt: {small[:5]}"
    ax = figs[-1].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("paso", "pérdida")
    plt.close("all")
