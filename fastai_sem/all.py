# Hand-written like fastai's own `all.py` files (not exported from a notebook): one import for the public API.
from .mixers import *
from .features import *
from .penalty import *
from .step import *
from .callback import *
from .data import *
from .gamma_find import *
from .compare import *
