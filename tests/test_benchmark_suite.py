"""The benchmark suite (benchmarks/suite.py): a smoke run and its FLOP counts.

The smoke run is the quick mode's smallest configuration (logistic
regression on Synthetic, 10 clients per round, engine and naive loop) with a
small matmul, run as a user runs it; it checks what the results file holds,
not how fast anything is.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import fedjax_engine as fe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, 'benchmarks')
sys.path.insert(0, BENCHMARKS)

import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_quick_suite_writes_rows_for_engine_and_naive(tmp_path):
  out = tmp_path / 'suite.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(BENCHMARKS, 'suite.py'), '--quick',
       '--workloads=synthetic_logistic', '--clients=10', '--cpu_devices=2',
       '--matmul_size=256', f'--out={out}'],
      capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert '| synthetic_logistic | 10 | engine' in proc.stdout
  result = json.loads(out.read_text())

  assert result['matmul_peak_flops_per_s'] > 0
  assert [m['when'] for m in result['matmul']] == ['start', 'end']
  assert result['workloads']['synthetic_logistic'][
      'train_flops_per_example'] == 2400
  rows = {r['impl']: r for r in result['results']}
  assert sorted(rows) == ['engine', 'naive']
  assert rows['engine']['devices'] == 2 and rows['naive']['devices'] == 1
  for r in rows.values():
    assert 'error' not in r, r.get('error')
    for key in ('round_s_mean', 'round_s_median', 'first_round_s',
                'examples_per_s', 'flops_per_s', 'peak_rss_mib',
                'rss_after_setup_mib'):
      assert r[key] > 0, key
    assert r['compile_s_est'] >= 0 and r['compile_s'] > 0
    # Timed in turns with the other implementation: 5 segments, a round
    # or more in each.
    assert r['timing_segments'] == 5 and r['rounds_timed'] >= 5
    assert r['flops_per_round'] == 2400 * 10 * 10 * 20
  assert rows['naive']['xla_step_flops'] > 0
  [check] = result['checks']
  assert check['ok'] and check['same_initial_params'], check
  assert set(result['targets']) == {'flops_reported_against_matmul_peak'}


def test_interleaved_timing_survives_a_failing_worker():
  import harness  # pylint: disable=g-import-not-at-top
  good = dict(kind='round', workload='synthetic_logistic', clients=4,
              impl='engine', devices=2, num_clients=20, min_rounds=2,
              max_rounds=4, time_budget=0.2, config_budget=60)
  bad = dict(good, impl='no_such_implementation')
  rows = harness.run_interleaved([bad, good], segments=2, timeout=300)
  assert 'no_such_implementation' in rows[0]['error']
  assert rows[1]['impl'] == 'engine' and 'error' not in rows[1]
  # At most max_rounds / segments rounds a turn, at least one.
  assert 2 <= rows[1]['rounds_timed'] <= 4


def test_low_memory_row_runs_with_its_settings_and_reports_memory():
  import harness  # pylint: disable=g-import-not-at-top
  cfg = dict(kind='round', workload='synthetic_logistic', clients=4,
             impl='engine_lowmem', fused_rounds=2, devices=2, num_clients=20,
             min_rounds=2, max_rounds=2, time_budget=0.2, config_budget=60)
  row = harness.run_worker(cfg, timeout=300)
  assert 'error' not in row, row.get('error')
  assert row['compile_for'] == 'memory'
  assert row['malloc_arena_max'] == '2'
  assert row['rounds_per_call'] == 2
  assert 0 < row['private_rss_mib'] < row['peak_rss_mib']
  assert row['shared_lib_rss_mib'] > 0
  plain = harness.run_worker(dict(cfg, impl='engine_fused'), timeout=300)
  assert plain['compile_for'] == 'speed'
  assert plain['malloc_arena_max'] is None


def _matmul_flops(jaxpr):
  """FLOPs of the matmuls in a jaxpr and its sub-jaxprs."""
  total = 0
  for eqn in jaxpr.eqns:
    out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * out * math.prod(lhs[d] for d in contract)
    elif eqn.primitive.name == 'conv_general_dilated':
      raise AssertionError('a native convolution: counted as slices only')
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, 'eqns'):
          total += _matmul_flops(sub)
        elif hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
          total += _matmul_flops(sub.jaxpr)
  return total


@pytest.mark.parametrize('name', sorted(wl.WORKLOADS))
def test_flops_per_example_match_the_training_step(name, monkeypatch):
  """The hand count equals the matmul FLOPs of the step's jaxpr.

  Convolutions run as slices and matmuls (the CPU path), where every
  multiply is useful. XLA's native convolution computes the input gradient
  of a 'VALID' convolution as a convolution of the zero-padded output
  gradient, which multiplies zeros too (17% more than counted for the CNN's
  second layer); the count is of the useful FLOPs.
  """
  from fedjax_engine.models import cnn  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(cnn, '_resolve_impl', lambda impl: 'slices')
  workload = wl.WORKLOADS[name]
  model = workload.model()
  params = jax.eval_shape(model.init, jax.random.key(0))
  shape = (60,) if workload.dataset is wl.synthetic else wl.EMNIST_IMAGE
  batch = {'x': jnp.zeros((wl.BATCH_SIZE,) + shape),
           'y': jnp.zeros((wl.BATCH_SIZE,), jnp.int32)}
  mask = jnp.ones((wl.BATCH_SIZE,), bool)
  grad = jax.grad(lambda p: fe.masked_loss(model, p, batch, mask,
                                           jax.random.key(0))[0])
  jaxpr = jax.make_jaxpr(grad)(params).jaxpr
  assert _matmul_flops(jaxpr) == workload.train_flops * wl.BATCH_SIZE
