"""``course_utils.data`` is ``course_utils.world.data`` (the course's world layer); this name is kept for notebooks."""
import sys as _sys

from .world import data as _module

_sys.modules[__name__] = _module
