r"""SCAFFOLD over all 3,400 federated-EMNIST writers with a host state table.

SCAFFOLD keeps one control variate per client, the size of the model. For
the EMNIST CNN (``fe.models.emnist_cnn(num_classes=62)``, 1,206,590 float32
params) and the 3,400 writers of federated EMNIST-62 that is a
3,400 x 4.83 MB = 16.4 GB (15.3 GiB) table: too large for a 16 GB
accelerator, and most of a 24 GiB machine. Here it lives in host memory
(``fe.host_table``): memory-mapped ``.npy`` files in a folder
(``--table=memmap``) or numpy arrays in RAM (``--table=ram``), and each
round, ``rnd(state, table, rnd.select(ids), key)``, copies only the
cohort's rows to the device and writes them back, as
``runner.run_experiment(..., state_table='host')`` does.

The full dataset is not needed: the script generates EMNIST-shaped clients
of the real size (3,400 clients, 671,585 training examples; ``x`` float32
``[n, 28, 28]`` in [0, 1), the layout of ``fe.datasets.emnist``, the model
adds the channel axis; ``y`` int32 in [0, 62)). Each client has 10
examples plus a lognormal share (coefficient of variation 0.39, that of
LEAF FEMNIST) of the rest, and the sizes sum to exactly
``--num_examples``. Pixels tile a small random
pool (a memory copy, not 2 GB of random draws): learning is not the point,
memory and running are.

It prints a table and writes ``benchmarks/results/scaffold_memory.json``:
the table's bytes, the peak resident set size of the process (the kernel's
``VmHWM``, which ``ru_maxrss`` repeats, and, sampled every
``--sample_interval`` seconds, the peaks of its anonymous and file-backed
parts and the lowest ``MemAvailable`` of the machine), the resident size
after each stage, seconds per round after the first, and the memmap
folder's size on disk. Memory-mapped rows count in the resident size while
mapped, but as file-backed pages the kernel can write back and drop them
under pressure; the anonymous part is what the machine must hold.

  python benchmarks/scaffold_memory.py                  # full size, memmap
  python benchmarks/scaffold_memory.py --table=ram \
      --out=benchmarks/results/scaffold_memory_ram.json
  python benchmarks/scaffold_memory.py --num_clients=50 --num_examples=5000 \
      --rounds=2 --out=/tmp/scaffold_memory_smoke.json  # smoke, ~30 s
"""

import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

flags.DEFINE_integer('num_clients', 3400, 'Clients (writers) of the '
                     'generated dataset and rows of the state table.')
flags.DEFINE_integer('num_examples', 671585, 'Training examples over all '
                     'clients (federated EMNIST-62: 671,585).')
flags.DEFINE_integer('clients_per_round', 10, 'Clients per round (the '
                     'SCAFFOLD paper and TFF EMNIST setups use 10-50).')
flags.DEFINE_integer('rounds', 3, 'Rounds to run; the first includes '
                     'compilation and is timed apart.')
flags.DEFINE_enum('table', 'memmap', ['memmap', 'ram'], 'Where the client-'
                  'state table lives: memory-mapped .npy files in '
                  '--table_dir, or numpy arrays in RAM.')
flags.DEFINE_string('table_dir', None, 'Folder of the memory-mapped table; '
                    'a new temporary folder when unset.')
flags.DEFINE_bool('keep', False, 'Keep the memory-mapped table files at the '
                  'end (deleted otherwise).')
flags.DEFINE_enum('gather', 'host', ['host', 'device'], "'host' gathers "
                  "each round's batches with numpy, so the examples are held "
                  "once; 'device' also copies every example to each device "
                  '(2 GB per CPU device at full size).')
flags.DEFINE_integer('batch_size', 20, 'Local batch size.')
flags.DEFINE_integer('local_steps', 5, 'Local steps per client (ignored '
                     'when --local_epochs is set).')
flags.DEFINE_integer('local_epochs', 0, 'Local epochs per client instead of '
                     '--local_steps when positive.')
flags.DEFINE_float('client_lr', 10 ** -1.5, 'Client SGD learning rate.')
flags.DEFINE_integer('client_chunk_size', None, 'Clients vmapped at once '
                     "per device; the engine's default when unset.")
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices (0: one per core, '
                     'as the CLI); left alone when XLA_FLAGS sets them.')
flags.DEFINE_integer('seed', 0, 'Seed of the data, the params and the '
                     'cohorts.')
flags.DEFINE_float('sample_interval', 0.05, 'Seconds between samples of the '
                   "process's resident memory.")
flags.DEFINE_string('out', os.path.join(HERE, 'results',
                                        'scaffold_memory.json'),
                    'Where to write the JSON results.')

MIN_CLIENT_SIZE = 10
NUM_CLASSES = wl.EMNIST_CLASSES
# Distinct images the pixels cycle through: 4,099 x 3 KiB = 12.6 MiB, and
# prime, so that clients do not all start at the same image.
PIXEL_POOL = 4099
GIB = 2.0 ** 30


def client_sizes(rng, num_clients, num_examples):
  """Sizes of at least ``MIN_CLIENT_SIZE``, lognormal above it, summing to
  exactly ``num_examples`` (largest remainders get the rounding's rest)."""
  extra = num_examples - MIN_CLIENT_SIZE * num_clients
  sigma = math.sqrt(math.log1p(wl.EMNIST_SIZE_CV ** 2))
  draws = rng.lognormal(0.0, sigma, num_clients)
  share = draws / draws.sum() * extra
  sizes = share.astype('int64')
  rest = extra - int(sizes.sum())
  sizes[(sizes - share).argsort()[:rest]] += 1
  return sizes + MIN_CLIENT_SIZE


def emnist_shaped(num_clients, num_examples, seed):
  """EMNIST-shaped ``FederatedData`` of exactly this many clients and
  examples; pixels tile a random pool, labels are uniform."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  sizes = client_sizes(rng, num_clients, num_examples)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  pool = rng.random((PIXEL_POOL,) + wl.EMNIST_IMAGE, dtype=np.float32)
  x = np.empty((num_examples,) + wl.EMNIST_IMAGE, np.float32)
  for start in range(0, num_examples, PIXEL_POOL):
    stop = min(start + PIXEL_POOL, num_examples)
    x[start:stop] = pool[:stop - start]
  y = rng.integers(0, NUM_CLASSES, num_examples, dtype=np.int32)
  return fe.FederatedData({'x': x, 'y': y}, offsets, np.arange(num_clients))


def memory_kib():
  """This process's resident sizes (``VmRSS``, ``RssAnon``, ``RssFile``,
  ``VmHWM``) and the machine's ``MemAvailable``, KiB."""
  out = {}
  with open('/proc/self/status') as f:
    for line in f:
      name = line.split(':', 1)[0]
      if name in ('VmRSS', 'RssAnon', 'RssFile', 'VmHWM'):
        out[name] = int(line.split()[1])
  with open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        out['MemAvailable'] = int(line.split()[1])
  return out


class MemorySampler:
  """Peaks of the resident parts and the lowest ``MemAvailable``, sampled
  on a thread: ``VmHWM`` gives only the total's peak."""

  def __init__(self, interval):
    self.interval = interval
    self.peak = {}
    self.lowest_available = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def sample(self):
    now = memory_kib()
    for name in ('VmRSS', 'RssAnon', 'RssFile'):
      self.peak[name] = max(self.peak.get(name, 0), now[name])
    available = now.get('MemAvailable')
    if available is not None:
      self.lowest_available = min(self.lowest_available or available,
                                  available)
    return now

  def _run(self):
    while not self._stop.wait(self.interval):
      self.sample()

  def __enter__(self):
    self.sample()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.sample()


def folder_bytes(folder):
  """(apparent size, bytes allocated on disk) of the files in ``folder``."""
  apparent = allocated = 0
  for entry in os.scandir(folder):
    if entry.is_file(follow_symlinks=False):
      st = entry.stat(follow_symlinks=False)
      apparent += st.st_size
      allocated += st.st_blocks * 512
  return apparent, allocated


def set_cpu_devices():
  """Must run before JAX creates its CPU backend (the first device query)."""
  import jax  # pylint: disable=g-import-not-at-top
  # JAX logs its search for a TPU at INFO, which absl shows.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  if harness.DEVICE_FLAG not in os.environ.get('XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices',
                      FLAGS.cpu_devices or os.cpu_count() or 1)


def check_flags():
  if FLAGS.num_examples < MIN_CLIENT_SIZE * FLAGS.num_clients:
    raise app.UsageError(
        f'--num_examples must be at least {MIN_CLIENT_SIZE} x --num_clients '
        f'= {MIN_CLIENT_SIZE * FLAGS.num_clients} (every client has at least '
        f'{MIN_CLIENT_SIZE} examples), got {FLAGS.num_examples}.')
  if not 1 <= FLAGS.clients_per_round <= FLAGS.num_clients:
    raise app.UsageError(
        f'--clients_per_round must lie in [1, {FLAGS.num_clients}] '
        f'(--num_clients), got {FLAGS.clients_per_round}.')
  if FLAGS.rounds < 1:
    raise app.UsageError(f'--rounds must be at least 1, got {FLAGS.rounds}.')


def run(table_dir, result):
  """Builds everything and runs the rounds, filling ``result`` as it goes
  (so that a failure still leaves what was measured)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top

  stages = result['rss_mib'] = {}
  seconds = result['seconds'] = {}
  def stage(name, sampler):
    now = sampler.sample()
    stages[name] = {k: now[k] / 1024 for k in ('VmRSS', 'RssAnon', 'RssFile')}
    print(f"  {name:22s} RSS {now['VmRSS'] / 2**20:6.2f} GiB (anon "
          f"{now['RssAnon'] / 2**20:6.2f}, file {now['RssFile'] / 2**20:6.2f})"
          f", machine available {now.get('MemAvailable', 0) / 2**20:6.2f} "
          'GiB', flush=True)

  with MemorySampler(FLAGS.sample_interval) as sampler:
    result['machine'].update(harness.device_info())
    stage('after imports', sampler)

    t = time.perf_counter()
    train = emnist_shaped(FLAGS.num_clients, FLAGS.num_examples, FLAGS.seed)
    seconds['data'] = time.perf_counter() - t
    sizes = train.sizes
    result['data'] = dict(
        clients=train.num_clients, examples=train.num_examples,
        bytes=train.nbytes, x_shape=list(train.features['x'].shape[1:]),
        size_min=int(sizes.min()), size_mean=float(sizes.mean()),
        size_median=float(np.median(sizes)), size_max=int(sizes.max()))
    stage('after data', sampler)

    model = fe.models.emnist_cnn(num_classes=NUM_CLASSES)
    algo = fe.algorithms.scaffold(
        model, client_optimizer=optax.sgd(FLAGS.client_lr))
    batching = (fe.Batching(FLAGS.batch_size, local_epochs=FLAGS.local_epochs)
                if FLAGS.local_epochs > 0 else
                fe.Batching(FLAGS.batch_size, local_steps=FLAGS.local_steps))
    t = time.perf_counter()
    rnd = fe.make_round(algo, train, clients_per_round=FLAGS.clients_per_round,
                        batching=batching,
                        client_chunk_size=FLAGS.client_chunk_size,
                        weighting='uniform', gather=FLAGS.gather)
    seconds['make_round'] = time.perf_counter() - t
    stage('after make_round', sampler)

    key = jax.random.key(FLAGS.seed)
    params = model.init(key)
    state = algo.init(params)
    row = jax.eval_shape(algo.init_client_state, params)
    result['params'] = int(sum(l.size for l in jax.tree.leaves(params)))
    result['table_bytes'] = FLAGS.num_clients * int(sum(
        l.size * l.dtype.itemsize for l in jax.tree.leaves(row)))
    t = time.perf_counter()
    table = fe.host_table(algo, params, FLAGS.num_clients, folder=table_dir)
    seconds['table'] = time.perf_counter() - t
    stage('after table', sampler)

    rng = np.random.default_rng(FLAGS.seed + 1)
    cohorts, times, losses = [], [], []
    for r in range(FLAGS.rounds):
      ids = rng.choice(FLAGS.num_clients, FLAGS.clients_per_round,
                       replace=False)
      cohorts.append(ids)
      t = time.perf_counter()
      state, table, metrics = rnd(state, table, rnd.select(ids),
                                  jax.random.fold_in(key, r))
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t)
      losses.append(float(metrics['train_loss']))
      result['rounds_run'] = r + 1
      print(f'  round {r}: {times[-1]:7.2f} s, train_loss {losses[-1]:.4f}',
            flush=True)
      if r == 0:
        stage('after first round', sampler)
    stage('at the end', sampler)

    result['chunk_size'] = rnd.chunk_size
    result['devices'] = int(rnd.mesh.devices.size)
    result['first_round_s'] = times[0]
    timed = times[1:]
    result['round_s_mean'] = float(np.mean(timed)) if timed else None
    result['round_s_median'] = float(np.median(timed)) if timed else None
    result['train_loss'] = losses
    result['checks'] = check_table(table, cohorts, np)
    if table_dir is not None:
      for leaf in jax.tree.leaves(table):
        leaf.flush()
      apparent, allocated = folder_bytes(table_dir)
      result['table_dir'] = dict(path=table_dir, apparent_bytes=apparent,
                                 allocated_bytes=allocated)
    del table

  usage = resource.getrusage(resource.RUSAGE_SELF)
  result['peak'] = dict(
      vmhwm_mib=memory_kib()['VmHWM'] / 1024,
      ru_maxrss_mib=usage.ru_maxrss / 1024,
      sampled_rss_mib=sampler.peak['VmRSS'] / 1024,
      sampled_anon_mib=sampler.peak['RssAnon'] / 1024,
      sampled_file_mib=sampler.peak['RssFile'] / 1024,
      lowest_machine_available_mib=(
          sampler.lowest_available / 1024 if sampler.lowest_available
          else None))


def check_table(table, cohorts, np):
  """Rows of clients that trained hold their new control variate (the mean
  of their gradients, not 0); a few others are still 0 and every row read
  is finite. Reads a handful of rows, not the table."""
  import jax  # pylint: disable=g-import-not-at-top
  trained = np.unique(np.concatenate(cohorts))
  untouched = np.setdiff1d(np.arange(FLAGS.num_clients), trained)[:5]
  rows = lambda ids: [np.asarray(leaf[ids]).reshape(len(ids), -1)
                      for leaf in jax.tree.leaves(table)]
  trained_rows = np.concatenate(rows(trained[:20]), axis=1)
  untouched_rows = np.concatenate(rows(untouched), axis=1)
  return dict(
      trained_rows_nonzero=bool(np.all(np.any(trained_rows != 0, axis=1))),
      untouched_rows_zero=bool(np.all(untouched_rows == 0)),
      rows_finite=bool(np.isfinite(trained_rows).all()))


def print_table(result):
  gib = lambda b: f'{b / GIB:.2f} GiB'
  mib_gib = lambda m: 'n/a' if m is None else f'{m / 1024:.2f} GiB'
  data, peak, rss = result['data'], result.get('peak', {}), result['rss_mib']
  rows = [
      ('clients / examples', f"{data['clients']:,} / {data['examples']:,} "
       f"(sizes {data['size_min']}-{data['size_max']}, mean "
       f"{data['size_mean']:.1f})"),
      ('model params', f"{result['params']:,}"),
      ('examples in memory', gib(data['bytes'])),
      ('table (theoretical)', f"{gib(result['table_bytes'])} "
       f"({result['table_bytes']:,} bytes, {FLAGS.table})"),
      ('peak RSS (VmHWM)', mib_gib(peak.get('vmhwm_mib'))),
      ('peak RSS (ru_maxrss)', mib_gib(peak.get('ru_maxrss_mib'))),
      ('peak anon / file RSS (sampled)',
       f"{mib_gib(peak.get('sampled_anon_mib'))} / "
       f"{mib_gib(peak.get('sampled_file_mib'))}"),
      ('lowest machine MemAvailable',
       mib_gib(peak.get('lowest_machine_available_mib'))),
      ('RSS after table (anon / file)',
       f"{mib_gib(rss['after table']['VmRSS'])} "
       f"({mib_gib(rss['after table']['RssAnon'])} / "
       f"{mib_gib(rss['after table']['RssFile'])})"),
      ('data / table build', f"{result['seconds']['data']:.1f} s / "
       f"{result['seconds']['table']:.1f} s"),
      ('first round (incl. compile)', f"{result['first_round_s']:.2f} s"),
      ('s/round after the first (mean, median)',
       'n/a (one round)' if result['round_s_mean'] is None else
       f"{result['round_s_mean']:.2f}, {result['round_s_median']:.2f}"),
      ('rounds run', f"{result['rounds_run']} of {FLAGS.clients_per_round} "
       f"clients, gather={FLAGS.gather}, {result['devices']} device(s), "
       f"chunk {result['chunk_size']}"),
      ('table folder on disk (apparent / allocated)',
       'n/a (ram)' if 'table_dir' not in result else
       f"{gib(result['table_dir']['apparent_bytes'])} / "
       f"{gib(result['table_dir']['allocated_bytes'])}"),
      ('checks', ', '.join(f'{k}={v}' for k, v in result['checks'].items())),
  ]
  print('\n| measure | value |\n|---|---|')
  for name, value in rows:
    print(f'| {name} | {value} |')


def main(argv):
  del argv
  check_flags()
  set_cpu_devices()
  made_dir = None
  table_dir = None
  if FLAGS.table == 'memmap':
    table_dir = FLAGS.table_dir or tempfile.mkdtemp(prefix='scaffold_table_')
    if not FLAGS.table_dir:
      made_dir = table_dir
    os.makedirs(table_dir, exist_ok=True)
  result = dict(flags={name: FLAGS[name].value for name in (
      'num_clients', 'num_examples', 'clients_per_round', 'rounds', 'table',
      'table_dir', 'gather', 'batch_size', 'local_steps', 'local_epochs',
      'client_lr', 'client_chunk_size', 'cpu_devices', 'seed')},
                machine=harness.machine_info(), rounds_run=0)
  result['machine']['argv'] = sys.argv
  print(harness.describe_machine(result['machine']), flush=True)
  params_estimate = 1206590 * 4 * FLAGS.num_clients
  print(f'expected: examples {FLAGS.num_examples * 785 * 4 / GIB:.2f} GiB, '
        f'table {params_estimate / GIB:.2f} GiB ({FLAGS.table}'
        + (f' in {table_dir}' if table_dir else '') + ')', flush=True)
  if table_dir is not None:
    free = shutil.disk_usage(table_dir).free
    if free < params_estimate:
      raise app.UsageError(f'{table_dir} has {free / GIB:.1f} GiB free; the '
                           f'table needs {params_estimate / GIB:.1f} GiB.')
  try:
    run(table_dir, result)
  finally:
    if table_dir is not None and not FLAGS.keep:
      if made_dir:
        shutil.rmtree(made_dir, ignore_errors=True)
      else:
        for name in os.listdir(table_dir):
          if name.startswith('state_') and name.endswith('.npy'):
            os.remove(os.path.join(table_dir, name))
    result['machine']['load_avg_end'] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)
  print_table(result)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
