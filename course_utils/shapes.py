"""``course_utils.shapes`` is ``course_utils.world.shapes`` (the course's world layer); this name is kept for notebooks."""
import sys as _sys

from .world import shapes as _module

_sys.modules[__name__] = _module
