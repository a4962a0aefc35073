__version__ = "0.1.0"

def __getattr__(name):
    "`fastai_sem.SEMMixup` and `fastai_sem.SEM`, imported on first use: `import fastai_sem` (and `fastai-sem --help`) does not import fastai"
    if name == 'SEMMixup':
        from .callback import SEMMixup
        return SEMMixup
    if name == 'SEM':
        from .step import SEM
        return SEM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
