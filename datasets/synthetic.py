"""LEAF Synthetic(alpha, beta): the generated non-IID benchmark of FedProx.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
Section 5.1 and Appendix C.1. For client k:

  u_k ~ N(0, alpha),  W_k ~ N(u_k, 1) in R^{10x60},  b_k ~ N(u_k, 1) in R^10
  B_k ~ N(0, beta),   v_k ~ N(B_k, 1) in R^60
  x ~ N(v_k, Sigma),  Sigma diagonal with Sigma_jj = j^-1.2  (j = 1..60)
  y = argmax(softmax(W_k x + b_k))

alpha controls how much the clients' models differ, beta how much their
inputs differ. As in the authors' generator, the second argument of N(0, .)
for u_k and B_k is a standard deviation. The IID variant shares one W, b
drawn from N(0, 1) and one input mean v drawn from N(0, 1) among all clients.
Client sizes follow a lognormal power law: ``min_size + floor(LogNormal(
size_log_mean, size_log_sigma))``; each client's examples are split into
train and test.

Example:

  >>> train, test = synthetic(alpha=1.0, beta=1.0, num_clients=5, seed=0)
  >>> train.num_clients, train.features['x'].shape[1], test.num_clients
  (5, 60, 5)
"""

import numpy as np

from fedjax_engine.data import FederatedData

NUM_FEATURES = 60
NUM_CLASSES = 10


def synthetic(*, alpha: float = 1.0, beta: float = 1.0, iid: bool = False,
              num_clients: int = 1000, size_log_mean: float = 4.0,
              size_log_sigma: float = 1.0, min_size: int = 10,
              test_fraction: float = 0.2, seed: int = 0):
  """Generates Synthetic(alpha, beta) (or Synthetic-IID).

  Args:
    alpha: spread of the clients' model means u_k.
    beta: spread of the clients' input means B_k.
    iid: the IID variant (alpha and beta are ignored).
    num_clients: number of clients K.
    size_log_mean, size_log_sigma, min_size: client size distribution.
    test_fraction: fraction of each client's examples held out for test.
    seed: everything is deterministic given the seed.

  Returns:
    ``(train, test)`` FederatedData with features ``x`` float32 [n, 60] and
    ``y`` int32 [n], clients named ``'0'``, ``'1'``, ...
  """
  if num_clients < 1:
    raise ValueError(f'num_clients must be positive, got {num_clients}.')
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f'test_fraction must lie in [0, 1), got {test_fraction}.')
  if min_size < 2:
    raise ValueError(f'min_size must be at least 2, got {min_size}.')
  if alpha < 0 or beta < 0:
    raise ValueError(f'alpha and beta must be >= 0, got {alpha}, {beta}.')
  rng = np.random.default_rng(seed)
  sizes = min_size + np.floor(
      rng.lognormal(size_log_mean, size_log_sigma, num_clients)).astype(np.int64)
  std_x = np.arange(1, NUM_FEATURES + 1) ** (-1.2 / 2)

  if iid:
    w = rng.normal(0.0, 1.0, (NUM_CLASSES, NUM_FEATURES))
    b = rng.normal(0.0, 1.0, NUM_CLASSES)
    v = rng.normal(0.0, 1.0, NUM_FEATURES)
    ws = np.broadcast_to(w, (num_clients,) + w.shape)
    bs = np.broadcast_to(b, (num_clients,) + b.shape)
    vs = np.broadcast_to(v, (num_clients,) + v.shape)
  else:
    u = rng.normal(0.0, alpha, num_clients)
    big_b = rng.normal(0.0, beta, num_clients)
    ws = rng.normal(u[:, None, None], 1.0,
                    (num_clients, NUM_CLASSES, NUM_FEATURES))
    bs = rng.normal(u[:, None], 1.0, (num_clients, NUM_CLASSES))
    vs = rng.normal(big_b[:, None], 1.0, (num_clients, NUM_FEATURES))

  owner = np.repeat(np.arange(num_clients), sizes)
  x = vs[owner] + rng.standard_normal((owner.size, NUM_FEATURES)) * std_x
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  y = np.empty(owner.size, np.int32)
  for k in range(num_clients):  # one matmul per client, at generation only
    lo, hi = offsets[k], offsets[k + 1]
    y[lo:hi] = np.argmax(x[lo:hi] @ ws[k].T + bs[k], axis=1)

  num_test = np.floor(sizes * test_fraction).astype(np.int64)
  position = np.arange(owner.size) - offsets[owner]
  is_test = position >= (sizes - num_test)[owner]
  ids = np.array([str(k) for k in range(num_clients)])

  def split(rows, counts):
    return FederatedData(
        {'x': x[rows].astype(np.float32), 'y': y[rows]},
        np.concatenate([[0], np.cumsum(counts)]), ids)

  return split(~is_test, sizes - num_test), split(is_test, num_test)
