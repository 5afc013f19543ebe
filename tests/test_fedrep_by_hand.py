"""FedRep worked out by hand on the two tiny clients: head b, body w.

Model and clients as in test_fedavg_by_hand.py: ``pred = w * x + b``, loss
``0.5 * (pred - y)^2``; client A: x = [1, 2], y = [1, 3]; client B:
x = [-2, -1, 0, 1, 2, 3], y = [-1, 0, 1, 1, 2, 3]. One full batch a round
(batch 6, one local step), SGD with lr 1/4, two head steps (both on that
batch), example weights 1/4 and 3/4. The gradients at (w, b) are
  A: d/dw = (5w + 3b - 7)/2,   d/db = (3w + 2b - 4)/2
  B: d/dw = (19w + 3b - 16)/6, d/db = (3w + 6b - 6)/6 = w/2 + b - 1.

Round 1 from w = 1, heads b_A = b_B = 0 (the initial b):
  A: d/db = b - 1/2: b = 0 + 1/8 = 1/8, then 1/8 + 3/32 = 7/32
     body step at b = 7/32: d/dw = (5 + 21/32 - 7)/2 = -43/64,
     w_A = 1 + 43/256, delta_A = -43/256
  B: d/db = b - 1/2 as for A: b_B = 7/32
     d/dw = (19 + 21/32 - 16)/6 = 39/64, delta_B = 39/256
  w1 = 1 - (-43/256 / 4 + 3/4 * 39/256) = 1 - 74/1024 = 475/512
Round 2 from w1 = 475/512, b_A = b_B = 7/32 = 224/1024:
  A: d/db = b + 1425/1024 - 2 = b - 623/1024:
     b = 224/1024 + 399/4096 = 1295/4096,
     then 1295/4096 + 1197/16384 = 6377/16384
     d/dw = (76000 + 19131 - 114688)/16384/2 = -19557/32768,
     delta_A = -19557/131072
  B: d/db = b + 475/1024 - 1 = b - 549/1024:
     b = 224/1024 + 325/4096 = 1221/4096,
     then 1221/4096 + 975/16384 = 5859/16384
     d/dw = (288800 + 17577 - 262144)/16384/6 = 44233/98304,
     delta_B = 44233/393216
  w2 = 475/512 - (-19557/524288 + 44233/524288) = 475/512 - 6169/131072
     = 115431/131072
The server's b stays 0. A's personalized model: (w2, b_A) = (115431/131072,
6377/16384). Training the body before the head, or with the old head, or
one head step, gives other numbers.
"""

import jax
import numpy as np
import optax
import pytest

import fedjax_engine as fe
from fedjax_engine.algorithms.fedrep import fedrep


def test_fedrep_two_rounds(linear_model, two_clients):
  algorithm = fedrep(linear_model, client_optimizer=optax.sgd(0.25),
                     head='b', head_steps=2)
  rnd = fe.make_round(algorithm, two_clients, clients_per_round=2,
                      batching=fe.Batching(batch_size=6, local_steps=1))
  table = fe.testing.initial_table(algorithm, linear_model, two_clients)
  state = algorithm.init(linear_model.init(jax.random.key(0)))
  assert list(table) == ['b']
  expected = [(475 / 512, [7 / 32, 7 / 32]),
              (115431 / 131072, [6377 / 16384, 5859 / 16384])]
  for r, (w, heads) in enumerate(expected):
    state, table, _ = rnd(state, table, rnd.select([0, 1]), jax.random.key(r))
    np.testing.assert_allclose(state.params['w'], w, rtol=1e-6)
    assert float(state.params['b']) == 0.0
    np.testing.assert_allclose(np.asarray(table['b']), heads, rtol=1e-6)
  row = jax.tree.map(lambda t: t[0], table)
  params = algorithm.personalize(state, row, None, None, jax.random.key(0))
  np.testing.assert_allclose([params['w'], params['b']],
                             [115431 / 131072, 6377 / 16384], rtol=1e-6)


def test_fedrep_head_selection(linear_model):
  params = linear_model.init(jax.random.key(0))
  build = lambda **kw: fedrep(linear_model, client_optimizer=optax.sgd(0.1),
                              **kw)
  # The default head is the last top-level key: 'w' after 'b'.
  assert list(build().init_client_state(params)) == ['w']
  mlp = fe.models.mlp(num_features=3, num_classes=2, hidden=(4,) * 10)
  head = fedrep(mlp, client_optimizer=optax.sgd(0.1)).init_client_state(
      mlp.init(jax.random.key(0)))
  assert sorted(head) == ['Dense_10/bias', 'Dense_10/kernel']
  nested = {'params': {'Dense_0': {'kernel': 1.0, 'bias': 2.0},
                       'Dense_1': {'kernel': 3.0, 'bias': 4.0}}}
  head = build(head='Dense_1, Dense_0/bias').init_client_state(nested)
  assert sorted(head) == ['params/Dense_0/bias', 'params/Dense_1/bias',
                          'params/Dense_1/kernel']
  with pytest.raises(ValueError, match=r"'Dense_2'.*Dense_0/bias"):
    build(head='Dense_2').init(nested)
  with pytest.raises(ValueError, match='not all'):
    build(head='params').init(nested)


@pytest.mark.parametrize('bad', [{'head_steps': -1}, {'head_steps': 1.5},
                                 {'head': 'a,,b'}, {'head': 3}])
def test_fedrep_rejects_bad_hyperparameters(linear_model, bad):
  name, = bad
  with pytest.raises(ValueError, match=name):
    fedrep(linear_model, client_optimizer=optax.sgd(0.1), **bad)
