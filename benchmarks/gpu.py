r"""The accelerator figures of the README, in one run of under 10 minutes.

Three parts, each written to ``--out`` as soon as it is measured, so a run
cut short keeps what it finished:

1. ``cnn``: the suite's EMNIST CNN workload (FedAvg, 10 local steps of
   batch 20, client SGD 0.05) at 10, 100 and 1,000 clients per round,
   cohorts drawn from 3,400 generated writers (federated EMNIST's size):
   seconds per round (fused calls of 10 rounds, median), compile seconds,
   and the device's peak memory.
2. ``compass``: 1,500 rounds of 10 clients of the same workload, end to end
   through ``fedjax_engine.runner.run_experiment`` (compilation, every round, a final
   evaluation on 340 generated writers): wall seconds. The target is 30 s.
3. ``resnet``: ResNet-18 with group norm (Hsieh et al., ICML 2020) on
   CIFAR-100-shaped data as in Reddi et al., "Adaptive Federated
   Optimization", ICLR 2021: 500 clients of 100 generated 24x24x3 images,
   10 clients a round, one local epoch of batch 20 (5 steps).

Usage (on a machine with a GPU; generated data, nothing is downloaded):

  python benchmarks/gpu.py                  # writes results/gpu.json
  python benchmarks/gpu.py --smoke          # tiny sizes on any backend:
                                            # checks the script (tests do)
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

import workloads as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

FULL = dict(writers=3400, cnn_clients=(10, 100, 1000), compass_rounds=1500,
            test_writers=340, cifar_clients=500, cifar_examples=100,
            cifar_image=(24, 24, 3),   # TFF's CIFAR-100 crops (Reddi et al.)
            rounds_per_call=10, timed_calls=5, time_budget=20.0)
SMOKE = dict(writers=40, cnn_clients=(2,), compass_rounds=3,
             test_writers=4, cifar_clients=3, cifar_examples=4,
             cifar_image=(8, 8, 3), rounds_per_call=2, timed_calls=1,
             time_budget=0.0)
CIFAR_CLASSES = 100


def device_facts():
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return dict(backend=jax.default_backend(), device_kind=device.device_kind,
              devices=jax.device_count(), jax=jax.__version__,
              python=platform.python_version())


def peak_device_mib():
  """The first device's peak memory in MiB (None where JAX has no count)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**20


def cifar_shaped(num_clients, examples, image):
  """Random CIFAR-100-shaped clients, ``examples`` images each."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(wl.SEED)
  n = num_clients * examples
  x = rng.random((n,) + image, dtype=np.float32,
                 out=fe.data.aligned_empty((n,) + image, np.float32))
  features = {'x': x, 'y': rng.integers(0, CIFAR_CLASSES, n, dtype=np.int32)}
  offsets = np.arange(num_clients + 1) * examples
  return fe.FederatedData(features, offsets, np.arange(num_clients))


def time_rounds(algorithm, params, train, *, batching, clients, sizes):
  """Compile, then time fused calls of ``sizes['rounds_per_call']`` rounds."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  rnd = fe.make_round(algorithm, train, clients_per_round=clients,
                      batching=batching)
  sampler = fe.sampling.uniform(num_clients=train.num_clients,
                                clients_per_round=clients,
                                key=jax.random.key(wl.COHORT_SEED))
  # One jitted copy (the round donates it): copied leaf by leaf, every
  # shape would compile a program of its own.
  state = algorithm.init(jax.jit(lambda t: jax.tree.map(jnp.copy, t))(params))
  key = jax.random.key(wl.SEED)
  calls, r, k = [], 0, sizes['rounds_per_call']
  start = time.perf_counter()
  while len(calls) < 1 + sizes['timed_calls'] or (
      time.perf_counter() - start < sizes['time_budget'] and len(calls) < 50):
    t0 = time.perf_counter()
    state, _, metrics = rnd.run_rounds(state, (), sampler, key, first_round=r,
                                       num_rounds=k)
    jax.block_until_ready(state)
    calls.append(time.perf_counter() - t0)
    r += k
  per_round = statistics.median(calls[1:]) / k
  return dict(clients=clients, s_per_round=per_round,
              first_call_s=calls[0],
              compile_s=max(calls[0] - k * per_round, 0.0),
              rounds_timed=k * (len(calls) - 1),
              train_loss=float(metrics['train_loss'][-1]),
              peak_device_mib=peak_device_mib())


def cnn(sizes):
  setup = wl.build(wl.WORKLOADS['emnist_cnn'], num_clients=sizes['writers'])
  rows = []
  for c in sizes['cnn_clients']:
    row = time_rounds(setup.algorithm, setup.params, setup.train,
                      batching=setup.batching, clients=c, sizes=sizes)
    row['writers'] = sizes['writers']
    rows.append(row)
    print(f"CNN C={c}: {row['s_per_round'] * 1e3:.1f} ms/round, compile "
          f"{row['compile_s']:.1f} s, peak {row['peak_device_mib']} MiB",
          flush=True)
  return rows


def compass(sizes):
  from fedjax_engine import runner  # pylint: disable=g-import-not-at-top
  setup = wl.build(wl.WORKLOADS['emnist_cnn'], num_clients=sizes['writers'])
  test = wl.emnist_shaped(sizes['test_writers'])
  rounds = sizes['compass_rounds']
  start = time.perf_counter()
  history = runner.run_experiment(
      setup.algorithm, setup.model, setup.train, test,
      batching=setup.batching, clients_per_round=10, num_rounds=rounds,
      eval_every=0, progress=False)
  wall = time.perf_counter() - start
  row = dict(rounds=rounds, clients=10, wall_s=wall, target_s=30.0,
             first_call_s=history[0]['seconds'],
             test_accuracy=history[-1].get('test_accuracy'),
             peak_device_mib=peak_device_mib())
  print(f'compass: {rounds} rounds of 10 clients in {wall:.1f} s '
        '(target 30 s)', flush=True)
  return row


def resnet(sizes):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fedjax_engine as fe  # pylint: disable=g-import-not-at-top
  image = tuple(sizes['cifar_image'])
  train = cifar_shaped(sizes['cifar_clients'], sizes['cifar_examples'], image)
  model = fe.models.resnet18_gn(num_classes=CIFAR_CLASSES, input_shape=image)
  algo = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))
  batching = fe.Batching(batch_size=20, local_epochs=1)
  row = time_rounds(algo, model.init(jax.random.key(wl.SEED)), train,
                    batching=batching, clients=min(10, sizes['cifar_clients']),
                    sizes=sizes)
  row.update(dataset_clients=sizes['cifar_clients'],
             examples_per_client=sizes['cifar_examples'])
  print(f"ResNet-18 GN, C={row['clients']}: "
        f"{row['s_per_round'] * 1e3:.1f} ms/round, compile "
        f"{row['compile_s']:.1f} s", flush=True)
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default=os.path.join(HERE, 'results', 'gpu.json'))
  p.add_argument('--smoke', action='store_true',
                 help='tiny sizes, to check the script on any backend')
  p.add_argument('--parts', default='cnn,compass,resnet')
  args = p.parse_args(argv)
  sizes = SMOKE if args.smoke else FULL
  parts = {'cnn': cnn, 'compass': compass, 'resnet': resnet}
  chosen = args.parts.split(',')
  unknown = sorted(set(chosen) - set(parts))
  if unknown:
    p.error(f'unknown --parts {unknown}; expected some of {sorted(parts)}')
  result = dict(machine=device_facts(), smoke=args.smoke, sizes=sizes)
  print(json.dumps(result['machine']), flush=True)
  start = time.perf_counter()
  for name in chosen:
    result[name] = parts[name](sizes)
    result['seconds'] = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
  print(f"wrote {args.out} ({result['seconds']:.0f} s)")
  return result


if __name__ == '__main__':
  main()
