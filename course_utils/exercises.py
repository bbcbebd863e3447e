"""Self-checking exercises in the notebooks (introduced in notebook 00; CONTRIBUTING.md, "Exercises").

An exercise is four cells at the end of a notebook, under **Ejercicios**:

1. a markdown statement (``### Ejercicio n: ...``);
2. the answer cell (tag ``exercise``, metadata ``"exercise": n``): code the student completes, with
   ``...`` where the answer goes (``plantillas = ...``, ``def f(x): ...``);
3. the check cell (tag ``exercise-check``, metadata ``"exercise": n``)::

       exercises.check(1, test, answer=plantillas, hint="...")

   where ``test()`` raises ``AssertionError("<why not, in Spanish>")`` when the answer does not hold;
4. the solution (tag ``exercise-solution``, metadata ``"exercise": n`` and
   ``{"jupyter": {"source_hidden": true}}``): a *markdown* cell holding one fenced ```` ```python ````
   block. JupyterLab shows it collapsed; being markdown it never runs ("Run all", nbval, ``make
   outputs``), and the slide decks leave it out. ``tests/test_exercises.py`` runs that block and the
   blank answer against the check.

``check`` prints one line in Spanish and never raises in a normal run, so "Run all" completes with
blank answers. In strict mode (``COURSE_STRICT_EXERCISES=1`` or ``exercises.STRICT = True``, used by
the tests) a failed or blank exercise also raises ``ExerciseFailed``.
"""
from __future__ import annotations

import os
import types
from typing import Any, Callable

__all__ = ["check", "is_blank", "ExerciseFailed", "STRICT", "BLANK_MESSAGE"]

# None: read COURSE_STRICT_EXERCISES at each check; True/False: override (the tests set it in the kernel).
STRICT: bool | None = None
BLANK_MESSAGE = "todavía sin responder (reemplazá ... por tu respuesta)"


class ExerciseFailed(AssertionError):
    """Raised by ``check`` in strict mode when an exercise is blank or its answer does not hold."""


def _strict() -> bool:
    if STRICT is not None:
        return bool(STRICT)
    return os.environ.get("COURSE_STRICT_EXERCISES", "0").strip().lower() in ("1", "true", "yes", "on")


def _placeholder_a(*args, **kwargs):
    ...


def _placeholder_b(*args, **kwargs):
    return ...


def _placeholder_c(*args, **kwargs):
    pass


_PLACEHOLDER_CODES = {f.__code__.co_code for f in (_placeholder_a, _placeholder_b, _placeholder_c)}


def is_blank(answer: Any) -> bool:
    """True when ``answer`` is still the placeholder: ``...`` itself, a tuple/list/dict/set holding
    ``...``, or a function whose body is only ``...``, ``return ...`` or ``pass``."""
    if answer is Ellipsis:
        return True
    if isinstance(answer, (tuple, list, set, frozenset)):
        return any(a is Ellipsis for a in answer)
    if isinstance(answer, dict):
        return any(v is Ellipsis or k is Ellipsis for k, v in answer.items())
    if isinstance(answer, types.FunctionType):
        code = answer.__code__
        consts = [c for c in code.co_consts if c not in (None, Ellipsis)]
        # a docstring is allowed; anything else (numbers, names, calls) means the body was written
        only_doc = len(consts) <= 1 and all(isinstance(c, str) for c in consts) and not code.co_names
        return code.co_code in _PLACEHOLDER_CODES and only_doc
    return False


def _say(n: int, ok: bool, text: str) -> None:
    print(f"{'✓' if ok else '✗'} Ejercicio {n}: {text}")


def check(n: int, test: Callable[[], Any], *, answer: Any, hint: str, ok: str = "correcto.") -> None:
    """Check exercise ``n``: print ``✓``/``✗`` in Spanish; raise only in strict mode.

    ``answer`` is what the student wrote (a value, a function, or a tuple of them): if it is still
    ``...`` the exercise is reported as unanswered. ``test()`` takes no arguments and raises
    ``AssertionError("<por qué no, en español>")`` when the answer is wrong; any other exception
    from the student's code is reported with its type and message. ``hint`` is printed on a wrong
    answer; ``ok`` after the ✓ (e.g. what the right answer shows).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the exercise number must be a positive int, got {n!r}")
    if not callable(test):
        raise ValueError(f"test must be a function with no arguments that raises AssertionError, got {test!r}")
    if not hint or not isinstance(hint, str):
        raise ValueError("every exercise has a hint (hint='...', in Spanish)")
    if is_blank(answer):
        _say(n, False, BLANK_MESSAGE)
        if _strict():
            raise ExerciseFailed(f"Ejercicio {n}: {BLANK_MESSAGE}")
        return None
    try:
        test()
    except AssertionError as exc:
        why = str(exc).strip() or "la respuesta no cumple lo pedido."
    except Exception as exc:  # the student's own code raised: say what and where to look
        why = f"tu código lanzó {type(exc).__name__}: {exc}"
    else:
        _say(n, True, ok)
        return None
    _say(n, False, why)
    print(f"  Pista: {hint}")
    print("  (La solución está en la celda colapsada de abajo: hacé clic en ··· para abrirla.)")
    if _strict():
        raise ExerciseFailed(f"Ejercicio {n}: {why}")
    return None
