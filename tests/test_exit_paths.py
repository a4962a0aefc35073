"""However a fit ends, SEMMixup leaves nothing behind and the Learner trains again.

An exception is raised at every Learner event (after_create excepted: it is not part of a fit) × {RuntimeError,
KeyboardInterrupt, each Cancel*Exception}, by a callback ordered before SEMMixup (order 0) and by one ordered after
it (order 60). `after_cancel_*` events only fire when that cancellation happens, so a second callback raises the
matching Cancel*Exception first (see `TRIGGERS`). After each: `learn.loss_func` is the same object, no forward hook
or pre-hook on any module, the clean batch tensor not modified, the model usable (a forward works, parameters
finite), and the next `fit` trains with SEMMixup.

The one documented gap: an exception in `before_batch` raised by a callback ordered after SEMMixup (order > 55) comes
after SEMMixup has set up the capture of h(x̃) for the forward pass that never happens; the next forward pass of the
model removes those hooks (`test_before_batch_after_semmixup`).

Each fit has one training batch and one validation batch (8 items each), so the ~1,600 fits take seconds.
"""
import pytest
import torch
from fastai.basics import (Callback, CancelBackwardException, CancelBatchException, CancelEpochException,
                           CancelFitException, CancelStepException, CancelTrainException, CancelValidException,
                           load_learner)
from fastai.callback.core import _events, _inner_loop

from fastai_sem.all import SEMMixup
from conftest import synth_learner, n_hooks, params_finite

EVENTS = [e for e in _events if e != 'after_create']
EXCEPTIONS = [RuntimeError, KeyboardInterrupt, CancelBatchException, CancelTrainException, CancelValidException,
              CancelEpochException, CancelFitException, CancelBackwardException, CancelStepException]
# what makes fastai fire each after_cancel_* event: (event, exception) raised first, by a callback of order 0
TRIGGERS = {'after_cancel_batch': ('after_pred', CancelBatchException),
            'after_cancel_backward': ('before_backward', CancelBackwardException),
            'after_cancel_step': ('before_step', CancelStepException),
            'after_cancel_train': ('after_batch', CancelTrainException),
            'after_cancel_validate': ('before_validate', CancelValidException),
            'after_cancel_epoch': ('after_train', CancelEpochException),
            'after_cancel_fit': ('before_epoch', CancelFitException)}
assert set(TRIGGERS) == {e for e in EVENTS if e.startswith('after_cancel')}


class Raiser(Callback):
    "Raise `exc()` the first time `event_name` fires in a fit (in training, for the events of the batch loop)"
    def __init__(self, event_name, exc, order=0): self.event_name, self.exc, self.order, self.fired = event_name, exc, order, False
    def __call__(self, event_name):
        if event_name == self.event_name and not self.fired and (event_name not in _inner_loop or self.learn.training):
            self.fired = True
            raise self.exc(f'raised at {event_name}') if self.exc is RuntimeError else self.exc()
        return super().__call__(event_name)


class BatchSpy(Callback):
    "Keep the clean batch tensor the Learner hands to the callbacks (order 0: before SEMMixup) and a copy of it"
    order = 0
    def before_batch(self):
        if self.training: self.xb_obj, self.x0 = self.xb[0], self.xb[0].clone()


def new_learner(shared_batch=False, **kw):
    spy = BatchSpy()
    learn = synth_learner(cbs=[SEMMixup(mix='cutmix', shared_batch=shared_batch), spy], head=True, n=8, bs=8, **kw)
    return learn, learn.loss_func, spy


def fit_raising(learn, *raisers):
    "Fit with `raisers` attached; return whether an exception escaped `fit`. The raisers are removed afterwards"
    learn.add_cbs(raisers)
    try:
        try: learn.fit(1, 1e-3)
        finally: learn.remove_cbs(raisers)
    except (Exception, KeyboardInterrupt): return True
    return False


def check_nothing_left(learn, lf, spy, forward=True):
    assert learn.loss_func is lf
    assert n_hooks(learn.model) == 0
    if hasattr(spy, 'xb_obj'): assert torch.equal(spy.xb_obj, spy.x0), 'the clean batch was modified in place'
    if forward:
        x = learn.dls.valid.one_batch()[0]
        learn.model.eval()
        with torch.no_grad(): out = learn.model(x)
        assert out.shape == (len(x), 3) and torch.isfinite(out).all()
        assert n_hooks(learn.model) == 0
    assert params_finite(learn.model)


def check_fits_again(learn, lf, spy):
    "The next fit trains with SEMMixup and leaves nothing behind either"
    sem = learn.sem_mixup
    sem.sem_loss = None
    learn.fit(1, 1e-3)
    assert sem.sem_loss is not None and torch.isfinite(sem.sem_loss) and torch.isfinite(learn.recorder.losses[-1])
    check_nothing_left(learn, lf, spy)


# every event × every exception × order 0 and 60 with the default set-up (an extra clean forward pass); with
# shared_batch=True (one forward pass of clean + mixed halves) every event × 4 exceptions × both orders
SHARED_EXCEPTIONS = (RuntimeError, KeyboardInterrupt, CancelBatchException, CancelFitException)
CASES = [(ev, exc, order, shared) for shared in (False, True) for ev in EVENTS for exc in EXCEPTIONS for order in (0, 60)
         if not (ev == 'before_batch' and order == 60) and (not shared or exc in SHARED_EXCEPTIONS)]


@pytest.mark.parametrize('event,exc,order,shared_batch', CASES,
                         ids=[f'{e}-{x.__name__}-order{o}' + ('-shared_batch' if s else '') for e, x, o, s in CASES])
def test_exception_at_event(event, exc, order, shared_batch):
    learn, lf, spy = new_learner(shared_batch)
    raiser = Raiser(event, exc, order)
    raisers = [raiser]
    if event in TRIGGERS: raisers.append(Raiser(*TRIGGERS[event]))
    fit_raising(learn, *raisers)
    assert raiser.fired, f'{event} never fired'
    check_nothing_left(learn, lf, spy)
    check_fits_again(learn, lf, spy)


@pytest.mark.parametrize('shared_batch', [False, True], ids=['extra_pass', 'shared_batch'])
@pytest.mark.parametrize('exc', EXCEPTIONS, ids=lambda e: e.__name__)
def test_before_batch_after_semmixup(exc, shared_batch):
    "The documented gap: raised in before_batch after SEMMixup set up its capture; the next forward removes it"
    learn, lf, spy = new_learner(shared_batch)
    raiser = Raiser('before_batch', exc, order=60)
    escaped = fit_raising(learn, raiser)
    assert raiser.fired
    assert learn.loss_func is lf
    assert torch.equal(spy.xb_obj, spy.x0)
    # the capture's two hooks (a Hook on the representation module, the cleanup hook on the model) may still be
    # there: when the exception ended the fit before any other forward pass (an exception that escaped fit, or
    # CancelEpochException, which skips validation)
    left = n_hooks(learn.model)
    assert left in (0, 2)
    if escaped or exc is CancelEpochException: assert left == 2
    with torch.no_grad(): learn.model(learn.dls.valid.one_batch()[0])   # the next forward pass of the model ...
    assert n_hooks(learn.model) == 0                                   # ... removes them
    check_nothing_left(learn, lf, spy)
    check_fits_again(learn, lf, spy)


@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError, CancelFitException], ids=lambda e: e.__name__)
def test_before_batch_gap_next_fit_without_forward(exc):
    "After the gap, the next fit (not a bare forward) also starts clean: its first forward pass removes the stale hooks"
    learn, lf, spy = new_learner()
    fit_raising(learn, Raiser('before_batch', exc, order=60))
    check_fits_again(learn, lf, spy)


@pytest.mark.parametrize('shared_batch', [False, True], ids=['extra_pass', 'shared_batch'])
def test_lr_find(tmp_path, shared_batch):
    learn, lf, spy = new_learner(shared_batch, path=tmp_path)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    res = learn.lr_find(num_it=6, show_plot=False)
    assert res.valley > 0
    check_nothing_left(learn, lf, spy, forward=False)
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), w0)), 'lr_find restores the weights'
    assert isinstance(learn.sem_mixup, SEMMixup) and learn.sem_mixup.sem_loss is not None
    check_nothing_left(learn, lf, spy)
    check_fits_again(learn, lf, spy)


@pytest.mark.parametrize('event', ['before_batch', 'after_pred', 'after_loss', 'before_step', 'after_batch'])
@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError, CancelFitException, CancelBatchException],
                         ids=lambda e: e.__name__)
def test_lr_find_interrupted(tmp_path, event, exc):
    learn, lf, spy = new_learner(path=tmp_path)
    raiser = Raiser(event, exc)
    learn.add_cb(raiser)
    try: learn.lr_find(num_it=6, show_plot=False)
    except (Exception, KeyboardInterrupt): pass
    finally: learn.remove_cb(raiser)
    assert raiser.fired
    assert not any(type(cb).__name__ == 'LRFinder' for cb in learn.cbs)
    check_nothing_left(learn, lf, spy)
    check_fits_again(learn, lf, spy)


def test_fit_cbs():
    "SEMMixup given to `fit(cbs=...)` only: it trains, and is gone afterwards with nothing left behind"
    learn = synth_learner(head=True, n=16, bs=8)
    lf, sem = learn.loss_func, SEMMixup()
    learn.fit(1, 1e-3, cbs=sem)
    assert sem.sem_loss is not None and torch.isfinite(sem.sem_loss)
    assert not any(isinstance(cb, SEMMixup) for cb in learn.cbs) and not hasattr(learn, 'sem_mixup')
    assert 'sem_loss' in learn.recorder.metric_names
    assert learn.loss_func is lf and n_hooks(learn.model) == 0
    learn.fit(1, 1e-3)   # a plain fit afterwards: no SEM columns
    assert 'sem_loss' not in learn.recorder.metric_names and n_hooks(learn.model) == 0


@pytest.mark.parametrize('event', ['before_fit', 'before_train', 'before_batch', 'after_pred', 'after_loss',
                                   'before_backward', 'after_step', 'after_train', 'after_fit'])
@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError, CancelFitException, CancelTrainException],
                         ids=lambda e: e.__name__)
@pytest.mark.parametrize('order', [0, 60])
def test_fit_cbs_interrupted(event, exc, order):
    learn = synth_learner(head=True, n=8, bs=8)
    lf, sem, raiser = learn.loss_func, SEMMixup(), Raiser(event, exc, order)
    try: learn.fit(1, 1e-3, cbs=[sem, raiser])
    except (Exception, KeyboardInterrupt): pass
    assert raiser.fired
    assert not any(isinstance(cb, (SEMMixup, Raiser)) for cb in learn.cbs)
    assert learn.loss_func is lf
    if event == 'before_batch' and order == 60:   # the documented gap: the next forward removes the hooks
        with torch.no_grad(): learn.model(learn.dls.valid.one_batch()[0])
    assert n_hooks(learn.model) == 0
    learn.fit(1, 1e-3, cbs=SEMMixup())
    assert n_hooks(learn.model) == 0 and learn.loss_func is lf and params_finite(learn.model)


def test_gap_model_pickles(tmp_path):
    "In the gap state (before any other forward pass), the model with its two pending hooks can still be saved whole"
    learn, lf, spy = new_learner()
    fit_raising(learn, Raiser('before_batch', KeyboardInterrupt, order=60))
    assert n_hooks(learn.model) == 2
    torch.save(learn.model, tmp_path/'model.pt')
    learn.export(tmp_path/'export.pkl')


class HooksAtBeforeTrain(Callback):
    "Count the hooks on the model right after SEMMixup's before_train"
    order = 56
    def before_train(self): self.n = n_hooks(self.model)


@pytest.mark.parametrize('exc', [KeyboardInterrupt, CancelEpochException], ids=lambda e: e.__name__)
def test_gap_cleared_when_next_fit_starts(exc):
    "The next fit's before_train removes a capture left by the gap, before any forward pass"
    learn, lf, spy = new_learner()
    fit_raising(learn, Raiser('before_batch', exc, order=60))
    assert n_hooks(learn.model) == 2
    spy2 = HooksAtBeforeTrain()
    learn.fit(1, 1e-3, cbs=spy2)
    assert spy2.n == 0
    check_nothing_left(learn, lf, spy)


@pytest.mark.parametrize('event', ['before_batch', 'after_pred', 'after_loss'])
def test_export_after_interrupt(tmp_path, event):
    "A Learner whose fit was interrupted mid-batch (order 0) exports and loads, with SEMMixup attached"
    learn, lf, spy = new_learner(path=tmp_path)
    fit_raising(learn, Raiser(event, KeyboardInterrupt))
    learn.export(tmp_path/'export.pkl')
    learn2 = load_learner(tmp_path/'export.pkl')
    assert isinstance(learn2.sem_mixup, SEMMixup) and n_hooks(learn2.model) == 0
