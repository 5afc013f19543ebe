"""What every peer worker shares: the exported workload and layout mappings.

Peers run in their own virtual environments, without the engine. The suite
exports each workload once, from an engine worker (``harness.export_workload``),
into a folder of plain numpy files:

* ``<workload>_data.npz``: ``x``, ``y`` (all examples, client after client)
  and ``offsets`` (client ``i`` owns rows ``offsets[i]:offsets[i+1]``);
* ``<workload>_params.npz``: the engine's initial params, one array per leaf,
  named by its path (``params/Dense_0/kernel``), in the engine's layout;
* ``<workload>_C<C>_plan0.npz``: the engine's index plan of round 0 (cohort
  0, round key ``fold_in(key(0), 0)``): ``rows [C, 10, 20]`` (rows of ``x``),
  ``mask`` and ``weights`` (client sizes), so that round 0 of every peer
  trains on exactly the engine's batches and its params can be checked.

Cohorts are :func:`workloads.cohorts` (numpy only): the same as the engine's
and the naive loop's. From round 1 on, a peer batches its clients its own way
(:func:`own_plan` where the peer has no batching of its own).

Layouts (engine -> peer):

* engine ``Dense`` kernel ``[out, in]``: PyTorch ``nn.Linear.weight``
  ``[out, in]`` as is; Haiku ``hk.Linear`` ``w [in, out]``: transposed.
* engine ``Conv2D`` kernel ``HWIO``: Haiku ``hk.Conv2D`` ``w`` as is;
  PyTorch ``nn.Conv2d.weight`` ``OIHW``: ``transpose(3, 2, 0, 1)``.
* the CNN's first dense layer after flattening: the engine (and Haiku)
  flatten NHWC, ``(h, w, c)``; PyTorch flattens NCHW, ``(c, h, w)``: its
  columns are permuted (:func:`nhwc_to_nchw_columns`).
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
if BENCH not in sys.path:
  sys.path.insert(0, BENCH)

import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

# The CNN's feature map before flattening: [12, 12, 64] (NHWC).
CNN_FLAT_HWC = (12, 12, 64)


def data_path(folder, workload):
  return os.path.join(folder, f'{workload}_data.npz')


def params_path(folder, workload):
  return os.path.join(folder, f'{workload}_params.npz')


def plan_path(folder, workload, clients):
  return os.path.join(folder, f'{workload}_C{clients}_plan0.npz')


# --------------------------------------------------------------------------
# Layouts.
# --------------------------------------------------------------------------

def layers(names):
  """Engine leaf names grouped by layer, in network order.

  ``names`` are paths like ``params/Conv2D_1/kernel``. Convolutions come
  before dense layers (all the suite's models are convs then denses), each
  kind by its index. Returns ``[(kind, kernel_name, bias_name)]``.
  """
  groups = {}
  for n in names:
    parts = n.split('/')
    groups.setdefault(parts[-2], {})[parts[-1]] = n
  def order(layer):
    kind, idx = layer.rsplit('_', 1)
    return (0 if kind.startswith('Conv') else 1, int(idx))
  return [('conv' if k.startswith('Conv') else 'dense', groups[k]['kernel'],
           groups[k]['bias']) for k in sorted(groups, key=order)]


def nhwc_to_nchw_columns(kernel, hwc=CNN_FLAT_HWC):
  """Dense kernel ``[out, h*w*c]`` on NHWC-flattened inputs -> on NCHW ones."""
  h, w, c = hwc
  out = kernel.shape[0]
  return np.ascontiguousarray(
      kernel.reshape(out, h, w, c).transpose(0, 3, 1, 2).reshape(out, -1))


def nchw_to_nhwc_columns(kernel, hwc=CNN_FLAT_HWC):
  h, w, c = hwc
  out = kernel.shape[0]
  return np.ascontiguousarray(
      kernel.reshape(out, c, h, w).transpose(0, 2, 3, 1).reshape(out, -1))


def to_torch(params):
  """Engine params (name -> array) -> ``[(weight, bias)]`` per torch layer."""
  out, after_conv = [], False
  for kind, k, b in layers(params):
    kernel = np.asarray(params[k], np.float32)
    if kind == 'conv':
      weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
      after_conv = True
    else:
      weight = nhwc_to_nchw_columns(kernel) if after_conv else kernel
      after_conv = False
    out.append((weight, np.asarray(params[b], np.float32)))
  return out


def from_torch(names, weights):
  """Inverse of :func:`to_torch`: ``[(weight, bias)]`` -> name -> array."""
  out, after_conv = {}, False
  for (kind, k, b), (weight, bias) in zip(layers(names), weights):
    weight = np.asarray(weight, np.float32)
    if kind == 'conv':
      out[k] = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
      after_conv = True
    else:
      out[k] = nchw_to_nhwc_columns(weight) if after_conv else weight
      after_conv = False
    out[b] = np.asarray(bias, np.float32)
  return out


def to_haiku(params):
  """Engine params -> ``[(w, b)]`` per Haiku layer.

  ``hk.Linear`` kernels are ``[in, out]``; convolutions are HWIO in both.
  """
  out = []
  for kind, k, b in layers(params):
    kernel = np.asarray(params[k], np.float32)
    out.append((kernel if kind == 'conv' else np.ascontiguousarray(kernel.T),
                np.asarray(params[b], np.float32)))
  return out


def from_haiku(names, weights):
  out = {}
  for (kind, k, b), (w, bias) in zip(layers(names), weights):
    w = np.asarray(w, np.float32)
    out[k] = w if kind == 'conv' else np.ascontiguousarray(w.T)
    out[b] = np.asarray(bias, np.float32)
  return out


# --------------------------------------------------------------------------
# The exported workload.
# --------------------------------------------------------------------------

class Train:
  """The clients: ``x``, ``y``, ``offsets``, and what the result row reports."""

  def __init__(self, x, y, offsets):
    self.x, self.y, self.offsets = x, y, np.asarray(offsets, np.int64)
    self.sizes = np.diff(self.offsets)
    self.num_clients = len(self.sizes)
    self.num_examples = int(self.offsets[-1])

  def client(self, i):
    s, e = self.offsets[i], self.offsets[i + 1]
    return self.x[s:e], self.y[s:e]


class Setup:
  """A peer's view of the workload (what the harness's RoundTimer needs)."""

  def __init__(self, folder, workload, clients):
    with np.load(data_path(folder, workload)) as f:
      self.train = Train(f['x'], f['y'], f['offsets'])
    with np.load(params_path(folder, workload)) as f:
      self.names = list(f['names'])
      self.params = {n: f[f'p{i}'] for i, n in enumerate(self.names)}
    with np.load(plan_path(folder, workload, clients)) as f:
      self.plan0 = dict(rows=f['rows'], mask=f['mask'], weights=f['weights'],
                        ids=f['ids'])
    # The peers train on every planned row: the engine's plan must have no
    # padding (it cycles small clients' examples rather than pad).
    if not self.plan0['mask'].all():
      raise ValueError(f'round 0 plan of {workload} C={clients} is padded')
    self.workload = wl.WORKLOADS[workload]
    self.clients = clients

  def leaves(self, params=None):
    """Params (name -> array) as the engine's leaf list, in its order."""
    params = self.params if params is None else params
    return [np.array(params[n], np.float32, copy=True) for n in self.names]


def own_plan(sizes, ids, rng, steps=wl.LOCAL_STEPS, batch=wl.BATCH_SIZE):
  """Local row indices ``[C, steps, batch]`` for peers with no batching.

  Each client goes through reshuffled epochs of its examples until
  ``steps * batch`` are drawn (the engine's rule for small clients).
  """
  need = steps * batch
  out = np.empty((len(ids), need), np.int64)
  for j, i in enumerate(ids):
    n = int(sizes[i])
    reps = -(-need // n)
    out[j] = np.concatenate([rng.permutation(n) for _ in range(reps)])[:need]
  return out.reshape(len(ids), steps, batch)


class Gate:
  """Runs a peer's own training loop in a thread, one round per ``advance``.

  Peers such as pfl (``algorithm.run``) and Flower (``run_simulation``) own
  their round loop. The loop runs in a background thread and calls
  :meth:`round_start` before each round (it blocks until the harness asks
  for that round) and :meth:`round_end` after it; :meth:`step` (harness
  side) lets one round run and waits for it. The timed part of a round is
  from ``step``'s go to the loop's ``round_end``.
  """

  def __init__(self, target):
    import queue  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    self._go, self._done = queue.Queue(), queue.Queue()
    self._target = target
    self._thread = threading.Thread(target=self._run, daemon=True)
    self.current = None

  def _run(self):
    import asyncio  # pylint: disable=g-import-not-at-top
    # pfl and Flower's simulation look for an event loop in their thread.
    asyncio.set_event_loop(asyncio.new_event_loop())
    try:
      self._target()
      self._done.put(RuntimeError('the peer loop ended early'))
    except BaseException as exc:  # pylint: disable=broad-except
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
      self._done.put(exc)

  def round_start(self):
    """Peer thread: waits for the harness's go; returns ``current``."""
    self._go.get()
    return self.current

  def round_end(self):
    self._done.put(None)

  def step(self, current):
    """Harness side: runs one round on ``current``; raises if the loop failed."""
    self.current = current
    if self._thread.ident is None:   # the first round starts the loop
      self._thread.start()
    self._go.put(True)
    got = self._done.get()
    if isinstance(got, BaseException):
      raise RuntimeError(f'peer loop failed: {got!r}') from got
