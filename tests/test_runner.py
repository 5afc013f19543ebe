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
  # 7 rounds, evaluation every 3: fused calls of 3, 3 and 1 rounds.
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


def test_profile_dir_gets_a_trace(experiment, tmp_path):
  runner.run_experiment(**experiment, num_rounds=2, rounds_per_call=1,
                        profile_dir=str(tmp_path))
  traces = glob.glob(os.path.join(tmp_path, '**', '*.xplane.pb'),
                     recursive=True)
  assert traces, os.listdir(tmp_path)


def test_bad_rounds_per_call_is_refused(experiment):
  with pytest.raises(ValueError, match='rounds_per_call must be >= 1, got 0'):
    runner.run_experiment(**experiment, num_rounds=2, rounds_per_call=0)
