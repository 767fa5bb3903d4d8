"""A fit killed mid-epoch resumes from its saved training state to exactly the weights of an uninterrupted fit."""
import pytest
import torch

from tunefuse.train import (LoopConfig, LoopState, linear_schedule, load_training_state, make_optimizer,
                            param_groups, save_training_state, train_loop)


class Killed(RuntimeError):
    pass


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    opt = make_optimizer(param_groups(model, 1e-2, 0.01))
    sched = linear_schedule(opt, 3 * 5, 0.1)  # 3 epochs of 5 steps (batch 8)

    def forward(batch):
        yield batch, torch.nn.functional.cross_entropy(model(x[batch]), y[batch], reduction="none")

    def evaluate():  # a validation score that moves, so early-stopping state and the best snapshot matter
        with torch.no_grad():
            return {"val_score": float(-torch.nn.functional.cross_entropy(model(x), y))}

    def snapshot():
        return {k: p.detach().clone() for k, p in model.named_parameters()}

    return model, opt, sched, forward, evaluate, snapshot


def _run(state, model, opt, sched, forward, evaluate, snapshot, on_step_end=None):
    cfg = LoopConfig(epochs=3, batch_size=8, patience=5, seed=7)
    return train_loop(forward, 40, torch.ones(40), list(model.parameters()), opt, sched, cfg, state,
                      evaluate=evaluate, snapshot=snapshot, on_step_end=on_step_end,
                      train_mode=lambda on: model.train(on), verbose=False)


@pytest.mark.parametrize("kill_at", [3, 5, 12])  # mid-epoch, an epoch boundary, mid last epoch
def test_resume_after_a_kill_matches_the_uninterrupted_fit(tmp_path, kill_at):
    model, *rest = _setup()
    done = _run(LoopState(), model, *rest)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched, forward, evaluate, snapshot = _setup()

    def checkpoint_then_die(state):
        save_training_state(tmp_path / "state", model, opt, sched, state)
        if state.step == kill_at:
            raise Killed

    with pytest.raises(Killed):
        _run(LoopState(), model, opt, sched, forward, evaluate, snapshot, on_step_end=checkpoint_then_die)
    torch.manual_seed(999)  # a new process: another RNG state, fresh model and optimiser
    model, opt, sched, forward, evaluate, snapshot = _setup(seed=5)
    state = load_training_state(tmp_path / "state", model, opt, sched)
    assert state.step == kill_at
    resumed = _run(state, model, opt, sched, forward, evaluate, snapshot)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in done.history])
    assert resumed.best_epoch == done.best_epoch and set(resumed.best) == set(done.best)
    assert sched.get_last_lr() == pytest.approx(rest[1].get_last_lr())


def test_training_state_of_another_model_is_refused(tmp_path):
    model, opt, sched, *_ = _setup()
    save_training_state(tmp_path / "s", model, opt, sched, LoopState())
    other = torch.nn.Linear(6, 3)
    other_opt = make_optimizer(param_groups(other, 1e-2, 0.0))
    with pytest.raises(ValueError, match="was saved for another model"):
        load_training_state(tmp_path / "s", other, other_opt, linear_schedule(other_opt, 10, 0.0))


@pytest.mark.slow
@pytest.mark.parametrize("strategy,kill_at", [("full", 5), ("lp-ft", 9)])  # mid-epoch 2; the last epoch's end
def test_finetuner_killed_mid_fit_resumes_to_the_uninterrupted_predictions(tmp_path, reviews, strategy, kill_at):
    """Finetuner(checkpoint_dir=...) saves its training state; the same fit after a crash continues from it."""
    import numpy as np

    from tests.conftest import TINY
    from tunefuse import Finetuner, faults

    X, y, Xt, _ = reviews
    X, y = X[:48], y[:48]  # 3 epochs of 3 steps (batch 16), early stopping on a 10 % split
    params = dict(TINY, strategy=strategy, epochs=3, checkpoint_every_s=0, random_state=3)
    expected = Finetuner(**params).fit(X, y)
    ckpt = tmp_path / "ckpt"
    faults.arm("step", kill_at, Killed)
    try:
        with pytest.raises(Killed):
            Finetuner(**params, checkpoint_dir=str(ckpt)).fit(X, y)
    finally:
        faults.disarm()
    assert any(ckpt.rglob("training_state.json")), "no training state was saved before the kill"
    torch.manual_seed(123)  # the caller's RNG moved on: the resumed fit must not depend on it
    resumed = Finetuner(**params, checkpoint_dir=str(ckpt)).fit(X, y)
    np.testing.assert_array_equal(resumed.predict_proba(Xt), expected.predict_proba(Xt))
    assert [h["train_loss"] for h in resumed.history_] == pytest.approx([h["train_loss"] for h in expected.history_])
    assert not any(ckpt.iterdir()), "a finished fit leaves its training state behind"
