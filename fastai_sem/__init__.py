__version__ = "0.1.0"

def __getattr__(name):
    "`fastai_sem.SEMMixup`, imported on first use: `import fastai_sem` (and `fastai-sem --help`) does not import fastai"
    if name == 'SEMMixup':
        from .callback import SEMMixup
        return SEMMixup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
