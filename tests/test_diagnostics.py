"""Round diagnostics: norms, their quantiles, cosine to the aggregate, and
the server metrics channel (robust rules' discarded clients).

By hand (``test_three_clients_by_hand``): outputs u = (3, 4), (0, 1),
(-6, -8) with weights 1, 1, 2. Their norms are 5, 1, 10 (mean 16 / 3). The
weighted mean is A = ((3, 4) + (0, 1) + 2 (-6, -8)) / 4 = (-2.25, -2.75),
|A| = sqrt(12.625). The unit vectors (0.6, 0.8), (0, 1), (-0.6, -0.8) sum to
(0, 1), so the mean cosine is <(0, 1), A> / (3 |A|) = -2.75 / (3 sqrt(12.625))
= -0.257986. Quantiles by rank ceil(q n): p10 -> 1st smallest (1), p50 ->
2nd (5), p90 and max -> 3rd (10), each read as its bin's upper edge,
at most a factor 10^(1/40) above.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine import diagnostics

FACTOR = 10 ** (1 / 40)


def _reduce(transform, outputs, weights):
  sent = [transform.client((), o, (), None, None) for o in outputs]
  messages = jax.tree.map(lambda *m: jnp.stack(m), *[s[0] for s in sent])
  agg = transform.aggregator
  acc = agg.accumulate(agg.init(jax.tree.map(lambda m: m[0], messages)),
                       messages, jnp.asarray(weights))
  aggregate, state = transform.server(transform.init(None),
                                      agg.finalize(acc), None)
  return sent, aggregate, transform.metrics(state)


def test_three_clients_by_hand():
  transform = diagnostics.diagnostics(fe.aggregate.weighted_mean())
  sent, aggregate, metrics = _reduce(
      transform, [jnp.array([3., 4.]), jnp.array([0., 1.]),
                  jnp.array([-6., -8.])], [1., 1., 2.])
  np.testing.assert_allclose(aggregate, [-2.25, -2.75], rtol=1e-6)
  assert [float(s[2]['update_norm_mean'].total) for s in sent] == [5, 1, 10]
  assert float(metrics['update_cosine']) == pytest.approx(
      -2.75 / (3 * math.sqrt(12.625)), rel=1e-5)
  for name, exact in [('p10', 1), ('p50', 5), ('p90', 10), ('max', 10)]:
    value = float(metrics[f'update_norm_{name}'])
    assert exact <= value * (1 + 1e-6) and value <= exact * FACTOR * 1.000001


def test_padded_clients_do_not_count():
  transform = diagnostics.diagnostics(fe.aggregate.weighted_mean())
  _, _, metrics = _reduce(
      transform, [jnp.array([1., 0.]), jnp.array([0., 1000.])], [1., 0.])
  assert float(metrics['update_cosine']) == pytest.approx(1.0)
  assert float(metrics['update_norm_max']) < 1.1


def test_engine_logs_server_metrics_of_robust_rules(synthetic_train,
                                                    logistic_model):
  # Multi-Krum keeping 3 of 5 real clients leaves out 2 every round.
  fedavg = fe.algorithms.fedavg(logistic_model,
                                client_optimizer=optax.sgd(0.1))
  robust = fe.robust.as_transform(fe.robust.krum(num_byzantine=1,
                                                 num_selected=3))
  algorithm = fe.transforms.apply(
      fedavg, robust, diagnostics.diagnostics(robust.aggregator))
  rnd = fe.make_round(algorithm, synthetic_train, clients_per_round=5,
                      batching=fe.Batching(batch_size=4, local_steps=2))
  state = algorithm.init(logistic_model.init(jax.random.key(0)))
  state, _, metrics = rnd(state, (), rnd.select([0, 3, 5, 7, 9]),
                          jax.random.key(1))
  assert float(metrics['robust_discarded']) == 2
  assert float(metrics['robust_degraded_rounds']) == 0
  assert 0 < float(metrics['update_cosine']) <= 1
  assert (float(metrics['update_norm_p10']) <=
          float(metrics['update_norm_p50']) <=
          float(metrics['update_norm_p90']) <=
          float(metrics['update_norm_max']))
  assert float(metrics['update_norm_max']) >= float(
      metrics['update_norm_mean'])


def test_cli_logs_diagnostics(tmp_path):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  out = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'fedjax_engine.train', '--num_clients=20',
       '--clients_per_round=10', '--local_steps=2', '--batch_size=8',
       '--noprogress', '--num_rounds=2', '--eval_every=2', '--diagnostics',
       '--robust_aggregator=multi_krum', '--num_byzantine=2',
       '--multi_krum_selected=6', f'--output_dir={out}'],
      capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  with open(out / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['robust_discarded'] for r in records] == [4, 4]
  # Which clients: 4 distinct ids of the 20 each round.
  for r in records:
    ids = r['robust_discarded_ids']
    assert len(set(ids)) == 4 and all(0 <= i < 20 for i in ids)
  assert all(-1 <= r['update_cosine'] <= 1 for r in records)
  assert all(r['update_norm_max'] > 0 for r in records)


def test_rejects_a_non_aggregator():
  with pytest.raises(ValueError, match='aggregator must be'):
    diagnostics.diagnostics('mean')
