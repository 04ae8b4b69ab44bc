"""Training guards: fail fast on a non-finite loss, clipping, the monitor, the teacher check,
the warm-up ramp, fresh features after SARL's BatchNorm pass, finite checkpoints."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_balanced.checkpoint import load_checkpoint, save_checkpoint
from avalanche_balanced.features import forward_with_features
from avalanche_balanced.guards import NonFiniteLossError, TrainingGuardPlugin, gradient_norm
from avalanche_balanced.guards import ramp_factor, teacher_collapsed
from test_sarl import C, TermRecorder, make_strategy, mlp, mlp_bn, run, tiny_benchmark


def _poison_term(strategy, term, at_experience, at_iteration):
    """Make ``term`` NaN at one iteration (counted from 1 within the experience)."""
    criterion, count = strategy.criterion, {"n": 0, "exp": None}

    def poisoned():
        if count["exp"] != strategy.task_id:
            count.update(n=0, exp=strategy.task_id)
        count["n"] += 1
        loss = criterion()
        if strategy.task_id == at_experience and count["n"] == at_iteration:
            strategy.loss_terms[term] = torch.tensor(float("nan"))
            return loss + strategy.loss_terms[term]
        return loss
    strategy.criterion = poisoned


def test_nan_loss_term_stops_before_the_update_naming_term_experience_iteration():
    bm = tiny_benchmark()
    s = make_strategy(model=mlp_bn())
    s.train(bm.train_stream[0])
    weights = {k: v.clone() for k, v in s.model.state_dict().items()}
    _poison_term(s, "prototype", at_experience=1, at_iteration=3)
    with pytest.raises(NonFiniteLossError, match=r"'prototype' \(nan\) in experience 1, iteration 3") as info:
        s.train(bm.train_stream[1])
    assert (info.value.term, info.value.experience, info.value.iteration) == ("prototype", 1, 3)
    # nothing non-finite reached the model, the buffer or the prototypes
    for name, value in s.model.state_dict().items():
        assert torch.isfinite(value.float()).all(), name
    assert not all(torch.equal(weights[k], v) for k, v in s.model.state_dict().items())  # two updates happened
    n = len(s.buffer)
    for name in ("examples", "logits", "features"):
        assert torch.isfinite(getattr(s.buffer, name)[:n]).all(), name
    assert torch.isfinite(s.prototypes.prototypes).all()


def test_nan_loss_of_any_strategy_is_named_loss():
    bm = tiny_benchmark()
    model = mlp()

    def nan_criterion(out, y):
        return F.cross_entropy(out, y) * float("nan")
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nan_criterion,
                     train_mb_size=16, train_epochs=1, plugins=[TrainingGuardPlugin()],
                     evaluator=EvaluationPlugin(loggers=[]))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"'loss' \(nan\) in experience 0, iteration 1"):
        strategy.train(bm.train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


class _SpikeGradients(TrainingGuardPlugin.__mro__[1]):  # a SupervisedPlugin
    """Multiplies every gradient by ``factor`` on one iteration (an injected spike)."""

    def __init__(self, at, factor=1e4):
        super().__init__()
        self.at, self.factor, self.count, self.norm_before = at, factor, 0, None

    def after_backward(self, strategy, **kwargs):
        self.count += 1
        if self.count == self.at:
            for p in strategy.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.factor)
            self.norm_before = float(gradient_norm(strategy.model.parameters()))


class _NormAfterClip(TrainingGuardPlugin.__mro__[1]):
    def __init__(self):
        super().__init__()
        self.norms = []

    def before_update(self, strategy, **kwargs):  # runs after the guard (plugin order)
        self.norms.append(float(gradient_norm(strategy.model.parameters())))


def test_injected_gradient_spike_is_clipped_and_counted():
    bm = tiny_benchmark()
    spike, after = _SpikeGradients(at=5), _NormAfterClip()
    s = make_strategy(clip_grad_norm=2.0, plugins=[spike])
    s.plugins.append(after)  # after SARL's own guard
    s.train(bm.train_stream[0])
    assert spike.norm_before > 100
    assert after.norms[4] == pytest.approx(2.0, rel=1e-4)
    assert max(after.norms) <= 2.0 * (1 + 1e-4)
    assert s.guard.clipped_per_experience[0] >= 1
    history = s.evaluator.get_all_metrics()
    assert max(history["Guard/max_grad_norm"][1]) >= spike.norm_before * 0.999
    assert sum(history["Guard/clipped_steps"][1]) == s.guard.clipped_per_experience[0]


def test_monitor_publishes_per_epoch_maxima_without_clipping_by_default():
    bm = tiny_benchmark()
    s = make_strategy(clip_grad_norm=None, epochs=2)
    s.train(bm.train_stream[0])
    history = s.evaluator.get_all_metrics()
    steps, norms = history["Guard/max_grad_norm"]
    assert len(norms) == 2 and all(v > 0 for v in norms)
    assert all(v > 0 for v in history["Guard/max_logit"][1])
    assert history["Guard/clipped_steps"][1] == [0.0, 0.0] and s.guard.clipped_per_experience == [0]
    with pytest.raises(ValueError, match="clip_grad_norm"):
        TrainingGuardPlugin(clip_grad_norm=0.0)


def test_teacher_collapsed_criterion():
    assert teacher_collapsed(0.05, None, majority_share=0.05)  # no better than the most frequent class
    assert not teacher_collapsed(0.5, None, majority_share=0.05)
    assert teacher_collapsed(0.2, 0.5, majority_share=0.05)  # below half the teacher in place
    assert not teacher_collapsed(0.3, 0.5, majority_share=0.05)
    assert teacher_collapsed(0.3, 0.5, majority_share=0.05, ratio=0.7)


def test_collapsed_teacher_is_rejected_with_a_warning_and_the_previous_one_kept():
    bm = tiny_benchmark()
    s = make_strategy(model=mlp_bn(), epochs=2)
    s.train(bm.train_stream[0])
    teacher = s.old_model
    assert s.rejected_teachers == [] and s.teacher_accuracy > 0.6
    # Inject a collapse at the end of experience 1: the last layer predicts one class only.
    collapse = TrainingGuardPlugin.__mro__[1]()

    def before_training_exp_end(strategy, **kwargs):
        with torch.no_grad():
            head = strategy.model[-1]
            head.weight.zero_()
            head.bias.zero_()
            head.bias[0] = 10.0
    collapse.after_training_epoch = before_training_exp_end
    s.plugins.insert(0, collapse)
    with pytest.warns(RuntimeWarning, match="after experience 1 has collapsed"):
        s.train(bm.train_stream[1])
    assert s.rejected_teachers == [1] and s.old_model is teacher
    assert "SARL/teacher_rejected" in s.evaluator.get_all_metrics()
    # A healthy experience is accepted again.
    s.plugins.remove(collapse)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        s.train(bm.train_stream[2])
    assert s.old_model is not teacher and s.rejected_teachers == [1]


def test_teacher_check_can_be_switched_off():
    bm = tiny_benchmark()
    s = make_strategy(teacher_ratio=None)
    s.train(bm.train_stream[0])
    assert s.old_model is not None and s.teacher_accuracy is None


def test_ramp_factor():
    assert [ramp_factor(k, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert ramp_factor(0, 0) == 1.0


def test_post_warmup_terms_ramp_in():
    """Identical runs up to the first post-warm-up iteration: there, with a ramp over 4
    iterations, distill and semantic are a quarter of their unramped values."""
    bm = tiny_benchmark()
    recs = {}
    for ramp in (0, 4):
        recs[ramp] = TermRecorder()
        run(make_strategy(plugins=[recs[ramp]], warmup_epochs=0, epochs=2, ramp_iterations=ramp), bm, n=2)
    first = next(i for i, (task, epoch, terms, _) in enumerate(recs[0].rows) if "distill" in terms)
    for term in ("distill", "semantic"):
        full = float(recs[0].rows[first][2][term])
        ramped = [float(row[2][term]) for row in recs[4].rows[first: first + 4]]
        assert full > 0
        assert ramped[0] == pytest.approx(0.25 * full, rel=1e-4)
    # before that iteration nothing differs
    assert recs[0].rows[first - 1][3] == recs[4].rows[first - 1][3]


def test_stored_features_are_fresh_after_the_batchnorm_pass():
    """Review defect: with a regrouping on the experience's last iteration (regroup_every=16,
    64 images in minibatches of 4), the plugin skipped the end-of-experience refresh, but
    SARL's BatchNorm pass over the buffer had changed the model since: stored features were
    stale (mean cosine to fresh ones 0.9)."""
    bm = tiny_benchmark(n_per_class=32)  # 2 classes per experience: 64 images
    s = make_strategy(model=mlp_bn(), epochs=1, train_mb_size=4, batch_size_mem=4, regroup_every=16)
    s.train(bm.train_stream[0])
    assert s.replay._iterations == 16
    n = len(s.buffer)
    with torch.no_grad():
        s.model.eval()
        fresh = forward_with_features(s.model, s.buffer.examples[:n])[1].flatten(1)
    cosine = F.cosine_similarity(fresh, s.buffer.features[:n].float(), dim=1)
    assert cosine.min().item() > 0.9999


def test_checkpoint_refuses_a_non_finite_state_and_keeps_the_last_finite_one(tmp_path):
    bm = tiny_benchmark()
    s = make_strategy()
    s.train(bm.train_stream[0])
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, s, config={"seed": 0})
    with torch.no_grad():
        next(s.model.parameters())[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite state.*model/0.weight"):
        save_checkpoint(path, s, config={"seed": 0})
    resumed = make_strategy()
    load_checkpoint(path, resumed, config={"seed": 0})
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())


def test_a_run_stopped_by_the_finite_check_resumes_from_its_checkpoint(tmp_path):
    bm = tiny_benchmark()
    path = tmp_path / "checkpoint.pt"
    s = make_strategy()
    s.train(bm.train_stream[0])
    save_checkpoint(path, s)
    _poison_term(s, "ce", at_experience=1, at_iteration=2)
    with pytest.raises(NonFiniteLossError):
        s.train(bm.train_stream[1])
    resumed = make_strategy(clip_grad_norm=1.0)
    load_checkpoint(path, resumed)
    resumed.train(bm.train_stream[1])
    accuracy = resumed.eval(bm.test_stream[:2])["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert accuracy > 1.5 / C  # it trains on, above chance over the classes seen
