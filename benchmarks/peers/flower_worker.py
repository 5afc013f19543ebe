"""Flower (flwr 1.42, Ray simulation engine): a harness worker's runner.

A ``ServerApp`` and a ``ClientApp`` (Message API), run by
``flwr.simulation.run_simulation`` with one virtual SuperNode per client
(1,000) on the Ray backend: ``init_args num_cpus=2``, each ClientApp
``num_cpus=threads`` (threads=1: two clients train at once, one torch
thread each; threads=2: one at a time with two).

* ServerApp ``main`` (low-level Grid API, so that the cohort is the suite's:
  Flower's ``FedAvg`` strategy samples nodes itself): once, a ``query``
  message to every node maps node ids to partition ids; then per round it
  sends the cohort's nodes a ``train`` message with the params
  (``ArrayRecord``), waits for all replies, and applies the example-weighted
  mean delta with server SGD(1.0).
* ClientApp ``train``: the PyTorch model (``torch_models.Net``) loaded with
  the params, 10 steps of SGD(0.05) on batches of 20 from the client's
  examples (round 0: the engine's plan, sent in the message; later rounds:
  reshuffled epochs of its own), replies with the params and its number of
  examples. Client data: the exported arrays, memory-mapped in each Ray
  worker.

The round loop (the ServerApp's ``main``) runs in a thread gated by
``common.Gate``. Peak RSS and CPU time add up the worker's Ray processes
(raylet, GCS, actors), which are its descendants (``harness.descendants``).
"""

import importlib.metadata
import os

import numpy as np

import common
import workloads as wl

_CACHE = {}


def _client_data(folder, workload):
  """The exported examples, memory-mapped (``x.npy``/``y.npy``), per process."""
  key = (folder, workload)
  if key not in _CACHE:
    base = os.path.join(folder, f'{workload}_flower')
    _CACHE[key] = (np.load(base + '_x.npy', mmap_mode='r'),
                   np.load(base + '_y.npy', mmap_mode='r'),
                   np.load(base + '_offsets.npy'))
  return _CACHE[key]


def client_train(msg, context):
  """The ClientApp's ``train``: local SGD from the server's params."""
  import torch  # pylint: disable=g-import-not-at-top
  from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict  # pylint: disable=g-import-not-at-top
  import torch_models  # pylint: disable=g-import-not-at-top
  cfg = msg.content['config']
  torch_models.set_threads(cfg['threads'])
  pid = int(context.node_config['partition-id'])
  x, y, offsets = _client_data(cfg['folder'], cfg['workload'])
  start, size = int(offsets[pid]), int(offsets[pid + 1] - offsets[pid])
  if 'rows' in cfg:
    rows = np.asarray(cfg['rows'], np.int64)
  else:
    rng = np.random.default_rng([int(cfg['round']), pid])
    rows = common.own_plan(np.array([size]), [0], rng).reshape(-1) + start
  net = torch_models.Net(cfg['workload'])
  torch_models.load_arrays(net, msg.content['arrays'].to_numpy_ndarrays())
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=wl.CLIENT_LR)
  xb = torch.from_numpy(np.ascontiguousarray(x[rows]))
  yb = torch.from_numpy(np.asarray(y[rows], np.int64))
  for s in range(wl.LOCAL_STEPS):
    sl = slice(s * wl.BATCH_SIZE, (s + 1) * wl.BATCH_SIZE)
    opt.zero_grad()
    loss = net.loss_fn(net(xb[sl]), yb[sl])
    loss.backward()
    opt.step()
  content = RecordDict({
      'arrays': ArrayRecord(torch_models.state_arrays(net)),
      'config': ConfigRecord({'num-examples': size, 'partition-id': pid})})
  return Message(content=content, reply_to=msg)


def client_query(msg, context):
  from flwr.app import ConfigRecord, Message, RecordDict  # pylint: disable=g-import-not-at-top
  return Message(content=RecordDict({'config': ConfigRecord(
      {'partition-id': int(context.node_config['partition-id'])})}),
                 reply_to=msg)


class Runner:

  def __init__(self, setup, cfg):
    import torch_models  # pylint: disable=g-import-not-at-top
    self.setup = setup
    self.cfg = cfg
    self.threads = int(cfg.get('threads') or 1)
    folder = cfg['export_dir']
    base = os.path.join(folder, f"{cfg['workload']}_flower")
    if not os.path.exists(base + '_offsets.npy'):
      np.save(base + '_x.npy', setup.train.x)
      np.save(base + '_y.npy', setup.train.y)
      np.save(base + '_offsets.npy', setup.train.offsets)
    net = torch_models.Net(cfg['workload'])
    net.load_engine(setup.params)
    self.arrays = torch_models.state_arrays(net)
    self.gate = common.Gate(self._loop)

  def _loop(self):
    from flwr.clientapp import ClientApp  # pylint: disable=g-import-not-at-top
    from flwr.serverapp import ServerApp  # pylint: disable=g-import-not-at-top
    from flwr.simulation import run_simulation  # pylint: disable=g-import-not-at-top
    client_app = ClientApp()
    client_app.train()(client_train)
    client_app.query()(client_query)
    server_app = ServerApp()
    server_app.main()(self._server_main)
    run_simulation(
        server_app=server_app, client_app=client_app,
        num_supernodes=self.setup.train.num_clients,
        backend_config={
            'client_resources': {'num_cpus': self.threads, 'num_gpus': 0.0},
            'init_args': {'num_cpus': os.cpu_count(),
                          'include_dashboard': False}})

  def _server_main(self, grid, context):
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    del context
    num_nodes = self.setup.train.num_clients
    deadline = time.monotonic() + 600
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < num_nodes:   # nodes register in the background
      if time.monotonic() > deadline:
        raise RuntimeError(f'{len(node_ids)} of {num_nodes} SuperNodes '
                           'registered in 600 s')
      time.sleep(0.2)
      node_ids = list(grid.get_node_ids())
    replies = grid.send_and_receive([
        Message(RecordDict({'config': ConfigRecord({})}), dst_node_id=n,
                message_type='query') for n in node_ids])
    node_of = {}
    for rep in replies:
      if rep.has_error():
        raise RuntimeError(f'query failed: {rep.error}')
      node_of[int(rep.content['config']['partition-id'])] = (
          rep.metadata.src_node_id)
    if len(node_of) != len(node_ids):
      raise RuntimeError(f'{len(node_of)} of {len(node_ids)} nodes answered')
    while True:
      r, ids = self.gate.round_start()
      plan = self.setup.plan0 if r == 0 else None
      msgs = []
      for j, i in enumerate(ids):
        conf = {'round': int(r), 'threads': self.threads,
                'folder': self.cfg['export_dir'],
                'workload': self.cfg['workload']}
        if plan is not None:
          conf['rows'] = [int(v) for v in plan['rows'][j].reshape(-1)]
        msgs.append(Message(
            RecordDict({'arrays': ArrayRecord(self.arrays),
                        'config': ConfigRecord(conf)}),
            dst_node_id=node_of[int(i)], message_type='train'))
      replies = list(grid.send_and_receive(msgs))
      total = [np.zeros_like(a, np.float64) for a in self.arrays]
      weight = 0.0
      for rep in replies:
        if rep.has_error():
          raise RuntimeError(f'client failed: {rep.error}')
        w = float(rep.content['config']['num-examples'])
        for t, s, c in zip(total, self.arrays,
                           rep.content['arrays'].to_numpy_ndarrays()):
          t += w * (s - c)
        weight += w
      if len(replies) != len(ids):
        raise RuntimeError(f'{len(replies)} replies for {len(ids)} clients')
      self.arrays = [(s - wl.SERVER_LR * (t / weight)).astype(np.float32)
                     for s, t in zip(self.arrays, total)]
      self.gate.round_end()

  def prepare(self, r, ids):
    """Untimed work before round ``r`` (none)."""

  def advance(self, r, ids):
    self.gate.step((r, np.asarray(ids)))
    return 1

  def params(self):
    import torch_models  # pylint: disable=g-import-not-at-top
    net = torch_models.Net(self.cfg['workload'])
    torch_models.load_arrays(net, self.arrays)
    return self.setup.leaves(net.engine_params(self.setup.names))

  def info(self):
    return dict(peer='flower', peer_versions={
        p: importlib.metadata.version(p) for p in ('flwr', 'ray', 'torch')},
                torch_threads=self.threads,
                ray_client_resources_num_cpus=self.threads,
                backend='cpu (PyTorch, Ray)',
                devices=os.cpu_count(),   # the cores Ray schedules clients on
                device_kind=f'{self.threads} torch threads per client')
