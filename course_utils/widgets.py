"""Interactive sliders that also work headless (introduced in notebook 00).

``interact(fn, **sliders)`` shows ipywidgets controls in JupyterLab. When headless (tests, CI,
HTML export) it calls ``fn`` once with the sliders' default values instead, so the executed
notebook still shows the figure.
"""
from __future__ import annotations

from typing import Callable

from .config import is_headless


def interact(fn: Callable, **sliders):
    """``ipywidgets.interact`` with a static fallback; slider values are widgets or plain defaults."""
    import ipywidgets as widgets

    if is_headless():
        defaults = {k: (w.value if isinstance(w, widgets.ValueWidget) else w) for k, w in sliders.items()}
        return fn(**defaults)
    return widgets.interact(fn, **sliders)


def int_slider(value: int, min: int, max: int, step: int = 1, description: str = ""):
    import ipywidgets as widgets

    return widgets.IntSlider(value=value, min=min, max=max, step=step, description=description,
                             continuous_update=False)


def float_slider(value: float, min: float, max: float, step: float = 0.01, description: str = ""):
    import ipywidgets as widgets

    return widgets.FloatSlider(value=value, min=min, max=max, step=step, description=description,
                               continuous_update=False)


def chat(answer: Callable[[object, str], str], options: dict, show: Callable[[object], None],
         suggestions: list[str], assistant: str = "asistente"):
    """A small chat over a chosen item (a scene, an image): a dropdown for the item, a text box (with
    ``suggestions``) and a button; each question goes to ``answer(item, question)`` and the exchange is
    appended under the item's picture (``show(item)`` draws it). Headless: one exchange per suggestion
    about the first item, printed, so the executed notebook shows what the chat does."""
    import ipywidgets as widgets
    from IPython.display import display

    if not options or not suggestions:
        raise ValueError("chat needs at least one option and one suggested question")
    if is_headless():
        name, item = next(iter(options.items()))
        show(item)
        for q in suggestions:
            print(f"[{name}] vos: {q}\n{' ' * (len(name) + 3)}{assistant}: {answer(item, q)}")
        return None
    pick = widgets.Dropdown(options=list(options), description="Escena")
    box = widgets.Combobox(value=suggestions[0], options=list(suggestions), description="Pregunta",
                           ensure_option=False, layout=widgets.Layout(width="28em"))
    send = widgets.Button(description="Preguntar", button_style="primary")
    picture, log = widgets.Output(), widgets.Output()

    def redraw(*_):
        picture.clear_output(wait=True)
        log.clear_output()
        with picture:
            show(options[pick.value])

    def ask(*_):
        question = box.value.strip()
        with log:
            if not question:
                print("Escribí una pregunta.")
                return
            print(f"vos: {question}\n{assistant}: {answer(options[pick.value], question)}")

    pick.observe(redraw, names="value")
    send.on_click(ask)
    redraw()
    ui = widgets.VBox([pick, picture, widgets.HBox([box, send]), log])
    display(ui)
    return ui
