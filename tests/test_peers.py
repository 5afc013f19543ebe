"""The peer simulators of the benchmark suite (benchmarks/peers).

Runs without the peers' virtual environments: the parameter export, the
layout mappings (engine -> PyTorch / Haiku and back) and the row of a peer
that is not installed are checked with numpy and the engine. The parts that
need a peer's venv (``bash benchmarks/peers/setup.sh``: the CNN's forward
pass and round 0 of FedJAX and pfl against the naive loop) are skipped with
a message saying so.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks', 'peers'))

import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position


def _venv_python(peer):
  """The peer's venv python; skips the test where the venv is missing."""
  python = harness.peer_python(peer)
  if not os.path.exists(python):
    pytest.skip(f'{peer} venv missing: run bash benchmarks/peers/setup.sh '
                f'{peer} (the suite then shows its rows as "not installed")')
  return python


def _cnn_params(rng):
  return {
      'params/Conv2D_0/bias': rng.normal(size=32).astype(np.float32),
      'params/Conv2D_0/kernel': rng.normal(size=(3, 3, 1, 32)).astype(
          np.float32),
      'params/Conv2D_1/bias': rng.normal(size=64).astype(np.float32),
      'params/Conv2D_1/kernel': rng.normal(size=(3, 3, 32, 64)).astype(
          np.float32),
      'params/Dense_0/bias': rng.normal(size=128).astype(np.float32),
      'params/Dense_0/kernel': rng.normal(size=(128, 9216)).astype(np.float32),
      'params/Dense_1/bias': rng.normal(size=62).astype(np.float32),
      'params/Dense_1/kernel': rng.normal(size=(62, 128)).astype(np.float32)}


def test_layers_in_network_order():
  names = ['params/Dense_1/bias', 'params/Dense_1/kernel',
           'params/Conv2D_1/kernel', 'params/Conv2D_1/bias',
           'params/Dense_10/kernel', 'params/Dense_10/bias',
           'params/Conv2D_0/bias', 'params/Conv2D_0/kernel']
  assert [k for _, k, _ in common.layers(names)] == [
      'params/Conv2D_0/kernel', 'params/Conv2D_1/kernel',
      'params/Dense_1/kernel', 'params/Dense_10/kernel']


def test_torch_layout_round_trip_and_flatten_order():
  rng = np.random.default_rng(0)
  params = _cnn_params(rng)
  torch_layers = common.to_torch(params)
  assert [w.shape for w, _ in torch_layers] == [
      (32, 1, 3, 3), (64, 32, 3, 3), (128, 9216), (62, 128)]
  back = common.from_torch(list(params), torch_layers)
  for name, value in params.items():
    np.testing.assert_array_equal(back[name], value)
  # The first dense layer sees the same function of the feature map: NHWC
  # flattened with the engine's kernel == NCHW flattened with the mapped one.
  fmap = rng.normal(size=(2, 12, 12, 64)).astype(np.float32)
  engine = fmap.reshape(2, -1) @ params['params/Dense_0/kernel'].T
  torch_like = (fmap.transpose(0, 3, 1, 2).reshape(2, -1)
                @ torch_layers[2][0].T)
  np.testing.assert_allclose(torch_like, engine, rtol=1e-4, atol=1e-3)


def test_haiku_layout_round_trip():
  rng = np.random.default_rng(1)
  params = {'Dense_0/bias': rng.normal(size=10).astype(np.float32),
            'Dense_0/kernel': rng.normal(size=(10, 60)).astype(np.float32)}
  (w, b), = common.to_haiku(params)
  assert w.shape == (60, 10)
  x = rng.normal(size=(3, 60)).astype(np.float32)
  np.testing.assert_allclose(x @ w + b, x @ params['Dense_0/kernel'].T + b,
                             atol=1e-4, rtol=1e-5)
  back = common.from_haiku(list(params), [(w, b)])
  for name, value in params.items():
    np.testing.assert_array_equal(back[name], value)


# Run in a peer's venv: argv[1] is the peers folder, argv[2] an .npz with the
# engine's CNN params (p0, p1, ... named by ``names``) and a probe batch ``x``;
# saves the logits of argv[4]'s model there (eval mode: no dropout) to argv[3].
_PEER_CNN_LOGITS = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
f = np.load(sys.argv[2])
params = {n: f[f'p{i}'] for i, n in enumerate(f['names'])}
x = f['x']
if sys.argv[4] == 'fedjax':
  import fedjax_worker
  model = fedjax_worker.model_for('emnist_cnn')
  hk_params, _ = fedjax_worker.haiku_params(model, params)
  logits = np.asarray(model.apply_for_eval(hk_params, {'x': x[..., None]}))
else:   # pfl and Flower: PyTorch
  import torch, torch_models
  net = torch_models.Net('emnist_cnn').eval()
  net.load_engine(params)
  logits = net(torch.from_numpy(x)).detach().numpy()
np.save(sys.argv[3], logits)
"""


@pytest.mark.parametrize('peer', ('fedjax', 'pfl'))
def test_peer_cnn_computes_the_engines_function(peer, tmp_path):
  """The CNN's layouts (HWIO, NHWC flattening) mapped right, without dropout.

  Round 0's check of the CNN only compares update norms (dropout masks
  differ), so the forward pass is checked here; Flower's clients use pfl's
  PyTorch model (``torch_models``).
  """
  python = _venv_python(peer)
  pytest.importorskip('fedjax_engine')
  import jax  # pylint: disable=g-import-not-at-top
  from fedjax_engine import registry  # pylint: disable=g-import-not-at-top
  model = registry.MODELS['emnist_cnn'](input_shape=(28, 28), num_classes=62)
  params = model.init(jax.random.key(0))
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  names = ['/'.join(str(getattr(k, 'key', k)) for k in kp) for kp, _ in flat]
  x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
  np.savez(tmp_path / 'cnn.npz', names=np.array(names), x=x,
           **{f'p{i}': np.asarray(v) for i, (_, v) in enumerate(flat)})
  proc = subprocess.run(
      [python, '-c', _PEER_CNN_LOGITS,
       os.path.join(ROOT, 'benchmarks', 'peers'), str(tmp_path / 'cnn.npz'),
       str(tmp_path / 'logits.npy'), peer],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  want = np.asarray(model.apply(params, {'x': x}))
  np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), want,
                             rtol=1e-4, atol=1e-4)


def test_export_and_own_plan(tmp_path):
  pytest.importorskip('fedjax_engine')
  out = harness.run_worker(dict(
      kind='export', workload='synthetic_logistic', num_clients=50,
      clients=[5], export_dir=str(tmp_path), devices=1), timeout=300)
  assert 'error' not in out, out
  setup = common.Setup(str(tmp_path), 'synthetic_logistic', 5)
  assert setup.train.num_clients == 50
  assert [p.shape for p in setup.leaves()] == [(10,), (10, 60)]
  plan = setup.plan0
  assert plan['rows'].shape == (5, 10, 20) and plan['mask'].all()
  np.testing.assert_array_equal(plan['weights'],
                                setup.train.sizes[plan['ids']])
  # Every planned row belongs to its client.
  for j, i in enumerate(plan['ids']):
    rows = plan['rows'][j]
    assert ((rows >= setup.train.offsets[i])
            & (rows < setup.train.offsets[i + 1])).all()
  local = common.own_plan(setup.train.sizes, plan['ids'],
                          np.random.default_rng(0))
  assert local.shape == (5, 10, 20)
  assert (local < setup.train.sizes[plan['ids']][:, None, None]).all()


def test_missing_peer_is_a_row_with_its_reason(monkeypatch, tmp_path):
  import suite  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(harness, 'peer_python',
                      lambda peer: str(tmp_path / peer / 'bin' / 'python'))
  why = suite.peer_unavailable('flower', None)
  assert why.startswith('not installed') and 'setup.sh' in why
  (tmp_path / 'pfl.failed').write_text('Collecting pfl\nERROR: no wheel\n\n')
  assert suite.peer_unavailable('pfl', None) == 'not installed: ERROR: no wheel'
  assert suite.peer_unavailable('pfl', 'boom') == 'export failed: boom'
  row = dict(workload='emnist_2nn', clients=10, impl='flower', error=why)
  assert 'not installed' in suite.table([row], None)


def test_peer_check_verdicts():
  import suite  # pylint: disable=g-import-not-at-top
  exact = dict(ok=True, rel_update_err=3e-7, same_initial_params=True,
               update_norm_ratio=1.0)
  assert suite.peer_check(exact, dropout=False)['verdict'] == 'OK'
  assert not suite.peer_check(dict(exact, ok=False), dropout=False)['ok']
  # Dropout: other masks, so only the update's size is compared.
  other_masks = dict(exact, ok=False, rel_update_err=0.55)
  assert suite.peer_check(dict(other_masks, update_norm_ratio=1.03),
                          dropout=True)['ok']
  assert not suite.peer_check(dict(other_masks, update_norm_ratio=1.2),
                              dropout=True)['ok']
  assert not suite.peer_check(dict(other_masks, same_initial_params=False),
                              dropout=True)['ok']


@pytest.mark.parametrize('peer', harness.PEERS)
def test_peer_venv_imports(peer):
  python = _venv_python(peer)
  proc = subprocess.run(
      [python, '-c', 'import sys; sys.path.insert(0, sys.argv[1]); '
       'import check_import; check_import.main(sys.argv[2])',
       os.path.join(ROOT, 'benchmarks', 'peers'), peer],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _round_cfg(tmp_path, impl, **kw):
  return dict(kind='round', workload='synthetic_logistic', clients=5,
              impl=impl, devices=1, fused_rounds=1, num_clients=50,
              min_rounds=1, max_rounds=1, time_budget=0.0, config_budget=None,
              export_dir=str(tmp_path),
              params_out=str(tmp_path / f'{impl}.npz'), **kw)


# Flower is left out: its Ray start alone takes 35-100 s (the suite runs it).
@pytest.mark.parametrize('peer', ('fedjax', 'pfl'))
def test_peer_round_zero_equals_naive_loop(peer, tmp_path):
  python = _venv_python(peer)
  pytest.importorskip('fedjax_engine')
  exported = harness.run_worker(dict(
      kind='export', workload='synthetic_logistic', num_clients=50,
      clients=[5], export_dir=str(tmp_path), devices=1), timeout=300)
  assert 'error' not in exported, exported
  naive = harness.run_worker(_round_cfg(tmp_path, 'naive'), timeout=300)
  got = harness.run_worker(_round_cfg(tmp_path, peer, python=python,
                                      threads=1), timeout=300)
  assert 'error' not in naive and 'error' not in got, (naive, got)
  check = harness.compare_params(str(tmp_path / f'{peer}.npz'),
                                 str(tmp_path / 'naive.npz'))
  assert check['ok'], check
