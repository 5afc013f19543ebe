"""run_experiment: fused calls versus rounds driven from Python, profiling."""

import glob
import json
import os

import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import runner


@pytest.fixture(scope='module')
def experiment(synthetic_train, logistic_model):
  _, test = fe.datasets.synthetic(num_clients=len(synthetic_train.sizes),
                                  seed=0)
  algo = fe.algorithms.fedavg(logistic_model, client_optimizer=optax.sgd(0.1))
  return dict(algorithm=algo, model=logistic_model, train=synthetic_train,
              test=test, batching=fe.Batching(batch_size=4, local_steps=2),
              clients_per_round=4, eval_every=3, progress=False)


def test_fused_calls_equal_rounds_driven_from_python(experiment, tmp_path):
  # 7 rounds, evaluation every 3: fused calls of at most 3 rounds.
  one = runner.run_experiment(**experiment, num_rounds=7, rounds_per_call=1)
  fused = runner.run_experiment(**experiment, num_rounds=7, rounds_per_call=4,
                                output_dir=str(tmp_path))
  assert [h['round'] for h in fused] == list(range(1, 8))
  evaluated = [h['round'] for h in fused if 'test_accuracy' in h]
  assert evaluated == [3, 6, 7]
  for a, b in zip(one, fused):
    assert sorted(a) == sorted(b)
    for k in a:
      if k != 'seconds':
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['round'] for line in lines] == list(range(1, 8))
  assert all(json.loads(line)['seconds'] > 0 for line in lines)


def _calls(monkeypatch):
  """Records the rounds of every fused call."""
  sizes = []
  run_rounds = fe.Round.run_rounds

  def spy(self, *args, num_rounds, **kwargs):
    sizes.append(num_rounds)
    return run_rounds(self, *args, num_rounds=num_rounds, **kwargs)

  monkeypatch.setattr(fe.Round, 'run_rounds', spy)
  return sizes


def test_call_length_follows_call_seconds_and_not_the_results(
    experiment, monkeypatch):
  sizes = _calls(monkeypatch)
  kwargs = dict(experiment, num_rounds=9, eval_every=0, rounds_per_call=4)
  # The first call runs one round; a call then takes as many rounds as fit
  # (all 4 with a day to spare, 1 with a nanosecond), the end cut to size.
  roomy = runner.run_experiment(**kwargs, call_seconds=86400.0)
  assert sizes == [1, 4, 4]
  del sizes[:]
  tight = runner.run_experiment(**kwargs, call_seconds=1e-9)
  assert sizes == [1] * 9
  for a, b in zip(roomy, tight):
    for k in a:
      if k != 'seconds':
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)


def test_rounds_for_call_fits_the_calls_seconds():
  def fit(seconds):
    return fe.simulate.rounds_for_call(seconds, rounds_per_call=10,
                                       call_seconds=2.0)
  # 2 s / 0.3 s = 6.7 rounds: 6. Short rounds stop at rounds_per_call,
  # long ones at 1; before any call (None), 1.
  assert [fit(None), fit(0.3), fit(0.001), fit(0.2), fit(2.5)] == [
      1, 6, 10, 10, 1]


def test_bad_call_seconds_is_refused(experiment):
  with pytest.raises(ValueError, match='call_seconds must be > 0, got 0'):
    runner.run_experiment(**experiment, num_rounds=2, call_seconds=0)


def test_compiled_for_memory_trains_alike(experiment):
  # XLA rejects an unknown compiler option, so this also checks that the
  # option's name is one the installed XLA:CPU knows.
  kwargs = dict(experiment, num_rounds=3, eval_every=0)
  fast = runner.run_experiment(**kwargs)
  lean = runner.run_experiment(**kwargs, compile_for='memory')
  assert [sorted(h) for h in fast] == [sorted(h) for h in lean]
  for a, b in zip(fast, lean):
    for k in set(a) - {'seconds'}:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
  with pytest.raises(ValueError, match="compile_for must be 'speed' or "
                     "'memory', got 'small'"):
    runner.run_experiment(**experiment, num_rounds=1, compile_for='small')


def test_profile_dir_gets_a_trace(experiment, tmp_path):
  runner.run_experiment(**experiment, num_rounds=2, rounds_per_call=1,
                        profile_dir=str(tmp_path))
  traces = glob.glob(os.path.join(tmp_path, '**', '*.xplane.pb'),
                     recursive=True)
  assert traces, os.listdir(tmp_path)


def test_bad_rounds_per_call_is_refused(experiment):
  with pytest.raises(ValueError, match='rounds_per_call must be >= 1, got 0'):
    runner.run_experiment(**experiment, num_rounds=2, rounds_per_call=0)
