__version__ = "0.1.0"

from .callback import SEMMixup
