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
