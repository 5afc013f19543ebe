r"""Command line: train a federated algorithm, write metrics and flags.

  python -m fedjax_engine.train --algorithm=fedavg --dataset=synthetic \
      --model=logistic --num_rounds=500 --clients_per_round=50 \
      --output_dir=/tmp/fedavg_synthetic

FedAdam, FedYogi, FedAdagrad and FedAvgM are ``--algorithm=fedavg`` with
``--server_optimizer=adam|yogi|adagrad`` or ``--server_momentum=0.9``.
Plug-ins load by module path: ``--algorithm=my_lab.my_method:build``.

Output in ``--output_dir``: ``metrics.jsonl`` (one JSON object per round) and
``flags.txt``, which reruns the experiment: ``--flagfile=<dir>/flags.txt``.
A bad flag value stops the program with one message and exit code 2.

Several processes, on one machine or many, shard each round's cohort over all
their devices when started with ``--coordinator_address``,
``--num_processes`` and ``--process_id``; ``python -m fedjax_engine.launch``
starts them on this machine.
"""

import functools
import hashlib
import inspect
import itertools
import json
import logging as py_logging
import math
import os
import sys
import traceback
import warnings

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import optax

from fedjax_engine import accounting
from fedjax_engine import algorithm as algorithm_lib
from fedjax_engine import attacks
from fedjax_engine import checkpoint
from fedjax_engine import compression
from fedjax_engine import data as data_lib
from fedjax_engine import datasets
from fedjax_engine import diagnostics
from fedjax_engine import evaluate as evaluate_lib
from fedjax_engine import heterogeneity
from fedjax_engine import privacy
from fedjax_engine import registry
from fedjax_engine import robust
from fedjax_engine import run_dir
from fedjax_engine import runner
from fedjax_engine import secure_aggregation as secagg
from fedjax_engine import simulate
from fedjax_engine import sweep
from fedjax_engine import transforms
from fedjax_engine.datasets import download

FLAGS = flags.FLAGS
# JAX's persistent compilation cache (--compilation_cache) is bounded so it
# never fills a disk.
COMPILATION_CACHE_BYTES = 2 << 30

flags.DEFINE_string('algorithm', 'fedavg', 'Algorithm name or plug-in '
                    '"package.module:factory".')
flags.DEFINE_string('dataset', 'synthetic', 'Dataset name or plug-in.')
flags.DEFINE_string('model', 'logistic', 'Model name or plug-in.')
flags.DEFINE_integer('num_rounds', 500, 'Federated rounds to run.')
flags.DEFINE_integer('clients_per_round', 50, 'Clients sampled per round.')
flags.DEFINE_integer('local_steps', None, 'Local steps per client per round '
                     '(default 10 unless --local_epochs is set).')
flags.DEFINE_integer('local_epochs', None, 'Local epochs per client per round '
                     '(instead of --local_steps).')
flags.DEFINE_integer('batch_size', 20, 'Local batch size.')
flags.DEFINE_enum('client_optimizer', 'sgd', registry.OPTIMIZERS,
                  'Client optimizer.')
flags.DEFINE_float('client_lr', 0.05, 'Client learning rate.')
flags.DEFINE_float('client_momentum', 0.0, 'Client SGD momentum.')
flags.DEFINE_enum('server_optimizer', 'sgd', registry.OPTIMIZERS,
                  'Server optimizer (sgd with lr 1 is plain FedAvg).')
flags.DEFINE_float('server_lr', 1.0, 'Server learning rate.')
flags.DEFINE_float('server_momentum', 0.0, 'Server SGD momentum (FedAvgM).')
flags.DEFINE_float('server_beta1', 0.9, 'Server adam/yogi beta1.')
flags.DEFINE_float('server_beta2', 0.99, 'Server adam/yogi beta2.')
flags.DEFINE_float('server_epsilon', 1e-3, 'Server adam/yogi/adagrad '
                   'epsilon (tau in Reddi et al. 2021).')
flags.DEFINE_float('client_dropout', 0.0, 'System heterogeneity: fraction '
                   'of each round\'s clients that fail after training and '
                   'send nothing.')
flags.DEFINE_float('stragglers', 0.0, 'System heterogeneity: fraction of '
                   'each round\'s clients that complete only a uniformly '
                   'random number (>= 1) of their local steps (FedProx\'s '
                   'stragglers).')
flags.DEFINE_enum('state_table', 'device', ['device', 'host'], 'Where a '
                  'stateful algorithm\'s client-state table (SCAFFOLD\'s '
                  'control variates, ...) lives: on the device, or in host '
                  'memory with only the cohort\'s rows moved each round '
                  '(rounds are then driven from Python).')
flags.DEFINE_string('state_table_dir', None, 'With --state_table=host: keep '
                    'the table in memory-mapped files in this folder, for '
                    'tables larger than memory.')
flags.DEFINE_integer('availability_period', 0, 'Client availability: with '
                     'a period > 0 rounds, each client is online '
                     '--available_fraction of every period, at its own '
                     'phase (a diurnal pattern), and only online clients '
                     'are sampled; 0: every client, every round.')
flags.DEFINE_float('available_fraction', 0.5, 'See --availability_period.')
# Privacy, robustness, compression and attacks: transforms of the clients'
# outputs (fedjax_engine.transforms), for any algorithm.
flags.DEFINE_enum('dp', 'none', privacy.DP_MODES, 'User-level differential '
                  'privacy: dp_fedavg (clip, sum, central Gaussian noise), '
                  'dp_ftrl (tree-aggregated noise, no sampling '
                  'amplification needed), local (each client adds noise).')
flags.DEFINE_float('dp_clip_norm', 1.0, '--dp: L2 norm each client\'s '
                   'update is clipped to (the initial norm with '
                   '--dp_target_quantile).')
flags.DEFINE_float('dp_noise_multiplier', None, '--dp: noise standard '
                   'deviation over the clip norm; or --target_epsilon.')
flags.DEFINE_float('target_epsilon', None, '--dp: pick the noise multiplier '
                   'that spends this epsilon over --num_rounds.')
flags.DEFINE_float('dp_delta', None, '--dp: delta of the reported (epsilon, '
                   'delta); default 1 / (number of clients)^1.1, below one '
                   'over the number of users as it must be.')
flags.DEFINE_float('dp_target_quantile', None, '--dp=dp_fedavg: adaptive '
                   'clipping to this quantile of the update norms (Andrew '
                   'et al. 2021); unset: fixed clipping.')
flags.DEFINE_enum('dp_accountant', 'rdp', accounting.ACCOUNTANTS, '--dp: '
                  'dp-accounting\'s RDP or PLD accountant.')
flags.DEFINE_enum('dp_sampling', 'without_replacement', accounting.SAMPLINGS,
                  '--dp: without_replacement samples --clients_per_round '
                  'clients a round (as without --dp); poisson includes each '
                  'client with probability --clients_per_round / clients, '
                  'the sampling most papers\' epsilons assume (smaller '
                  'epsilon for the same noise).')
flags.DEFINE_enum('robust_aggregator', 'mean', robust.AGGREGATORS, 'How '
                  'client outputs combine: the algorithm\'s mean, or a '
                  'Byzantine-robust rule (keeps the whole cohort\'s '
                  'outputs in memory).')
flags.DEFINE_float('trim_fraction', None, '--robust_aggregator='
                   'trimmed_mean: the fraction cut at each end.')
flags.DEFINE_integer('num_byzantine', None, '--robust_aggregator=krum, '
                     'multi_krum, bulyan: the number of Byzantine clients '
                     'f tolerated.')
flags.DEFINE_integer('multi_krum_selected', None, '--robust_aggregator='
                     'multi_krum: the number of clients averaged.')
flags.DEFINE_float('norm_bound', None, 'Clip every client\'s update to '
                   'this L2 norm before aggregation (norm bounding).')
flags.DEFINE_enum('compression', 'none', compression.COMPRESSIONS, 'Uplink '
                  'compression of client updates.')
flags.DEFINE_integer('quantize_bits', 8, '--compression=quantize: bits per '
                     'value.')
flags.DEFINE_float('sparsity_fraction', 0.01, '--compression=top_k, '
                   'random_k: the fraction of values sent.')
flags.DEFINE_bool('error_feedback', True, '--compression=top_k, random_k: '
                  'keep what was not sent in a per-client residual.')
flags.DEFINE_enum('secure_aggregation', 'none', secagg.MODES, 'Secure '
                  'aggregation of the clients\' outputs (the server sees '
                  'only their sum): secagg masks with every participant '
                  '(Bonawitz et al. 2017), secagg_plus with '
                  '--secagg_neighbors on a random ring (Bell et al. 2020). '
                  'The aggregate is the survivors\' mean, each counted '
                  'once, or their sum under --dp.')
flags.DEFINE_integer('secagg_bits', 32, '--secure_aggregation: the modulus '
                     '2^bits, bits sent per value (2 to 32).')
flags.DEFINE_float('secagg_clip', 1.0, '--secure_aggregation: every value '
                   'is clipped to [-clip, clip] before fixed-point encoding.')
flags.DEFINE_integer('secagg_neighbors', None, '--secure_aggregation='
                     'secagg_plus: neighbours each client masks with (even); '
                     'default 2 ceil(log2(--clients_per_round)).')
flags.DEFINE_float('secagg_dropout', 0.0, '--secure_aggregation: the chance '
                   'that a client drops after masking.')
flags.DEFINE_float('secagg_threshold', 0.5, '--secure_aggregation: the '
                   'fraction of a client\'s neighbours that must survive to '
                   'rebuild its seeds; fewer aborts the round.')
flags.DEFINE_bool('diagnostics', False, 'Log every round the clients\' '
                  'update norms (mean, p10, p50, p90, max) and their mean '
                  'cosine similarity to the aggregate.')
flags.DEFINE_float('malicious_fraction', 0.0, 'The fraction of clients that '
                   'are malicious (a fixed set, drawn from --seed).')
flags.DEFINE_enum('attack', 'none', attacks.UPDATE_ATTACKS, 'What the '
                  'malicious clients send instead of their update.')
flags.DEFINE_enum('data_attack', 'none', attacks.DATA_ATTACKS, 'How the '
                  'malicious clients poison their training data (with '
                  'backdoor: test_backdoor_accuracy, the attack\'s success '
                  'rate).')
flags.DEFINE_float('attack_scale', 1.0, '--attack=sign_flip: the scale.')
flags.DEFINE_float('attack_stddev', 1.0, '--attack=gaussian: the standard '
                   'deviation.')
flags.DEFINE_float('attack_boost', None, '--attack=model_replacement: the '
                   'boost; default clients per round over malicious ones.')
flags.DEFINE_float('alie_z', None, '--attack=alie: the shift in standard '
                   'deviations; default the paper\'s z_max.')
flags.DEFINE_integer('backdoor_target', 0, '--data_attack=backdoor: the '
                     'target class.')
flags.DEFINE_float('backdoor_fraction', 0.5, '--data_attack=backdoor: the '
                   'share of each malicious client\'s examples poisoned.')
flags.DEFINE_enum('weighting', 'examples', ['examples', 'uniform'],
                  'Aggregation weights: client example counts or uniform.')
flags.DEFINE_integer('eval_every', 50, 'Evaluate every this many rounds (and '
                     'after the last); 0: only after the last.')
flags.DEFINE_integer('eval_batch_size', 1024, 'Examples per evaluation '
                     'forward pass.')
flags.DEFINE_bool('personal_eval', False, 'At every evaluation, also test '
                  'each client\'s own model (the algorithm\'s personal model, '
                  'else the global one, after --finetune_steps) on its own '
                  'test examples: test_personal_<metric> with _client_min '
                  'and _client_p10, and personal_per_client.csv.')
flags.DEFINE_integer('finetune_steps', 0, 'With --personal_eval: local SGD '
                     'steps each client takes on its training examples '
                     'before its test.')
flags.DEFINE_float('finetune_lr', None, 'With --personal_eval: fine-tuning '
                   'learning rate (default --client_lr).')
flags.DEFINE_integer('seed', 0, 'Seed for params, sampling and clients.')
flags.DEFINE_integer('data_seed', None, 'Seed for generated data and for '
                     'splitting a centralized dataset into clients; default '
                     '--seed (in a sweep, the first of --seeds).')
flags.DEFINE_list('seeds', None, 'A sweep: train these seeds together, '
                  'vmapped in one compiled program, one folder each '
                  '(<output_dir>/seed_<s>/), the data shared (--data_seed).')
flags.DEFINE_list('client_lrs', None, 'A learning-rate sweep: train these '
                  'client learning rates together (each with every seed of '
                  '--seeds, default --seed), in one compiled program, one '
                  'folder each (<output_dir>/client_lr_<v>/seed_<s>/).')
flags.DEFINE_list('server_lrs', None, 'As --client_lrs, for the server '
                  'learning rate; with both, every pair '
                  '(<output_dir>/client_lr_<v>_server_lr_<w>/seed_<s>/).')
flags.DEFINE_integer('client_chunk_size', None, 'Clients trained at once per '
                     'device (default: chosen for the backend and model).')
flags.DEFINE_enum('gather', 'device', ['device', 'host'], 'Gather batches on '
                  'the device inside the round, or on the host.')
flags.DEFINE_string('output_dir', None, 'Where metrics.jsonl and flags.txt '
                    'go; one run per folder (see --output_exists).')
flags.DEFINE_enum('output_exists', 'refuse', run_dir.IF_EXISTS, 'When '
                  '--output_dir already holds a run: refuse to start, '
                  'overwrite that run, or move it aside to <dir>.N.')
flags.DEFINE_bool('resume', False, 'Continue the run in --output_dir from '
                  'its latest checkpoint, with the flags it was started '
                  'with; the metrics come out as if it had never stopped. '
                  'A folder without a run starts one.')
flags.DEFINE_integer('checkpoint_every', 0, 'With --output_dir, save a '
                     'checkpoint every this many rounds (one is always '
                     'saved after the last round, and on Ctrl-C or '
                     'SIGTERM); 0: only those.')
flags.DEFINE_integer('keep_checkpoints', 3, 'The latest checkpoints kept.')
flags.DEFINE_bool('tensorboard', False, 'With --output_dir, also write the '
                  'metrics as TensorBoard scalars to <output_dir>/tensorboard '
                  '(tensorboard --logdir=<output_dir>).')
flags.DEFINE_enum('nonfinite', 'stop', ['stop', 'warn'], 'A non-finite loss '
                  'or parameter stops the run (exit code 3), or only warns.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices to shard the '
                     'cohort over when running on CPU; 0: one per core. '
                     'XLA:CPU runs small per-client ops on one core, so one '
                     'device per core is what uses them all.')
flags.DEFINE_string('compilation_cache', '', 'Keep the compiled XLA '
                    'programs in this folder (JAX\'s persistent compilation '
                    'cache, e.g. ~/.cache/fedjax_engine/xla), so a rerun or '
                    'a resumed run of the same experiment skips compiling; '
                    '\'\' (the default): no cache.')
flags.DEFINE_integer('rounds_per_call', 10, 'Rounds run in one compiled call '
                     '(sampling and batching on the device, no Python between '
                     'them; metrics are written after each call). 1: every '
                     'round from Python, as is every round with '
                     '--gather=host.')
flags.DEFINE_float('call_seconds', simulate.CALL_SECONDS, 'A compiled call '
                   'runs the rounds (at most --rounds_per_call) that fit in '
                   'about this many seconds, timed from the call before, so '
                   'long rounds run one per call: on CPU a call\'s memory '
                   'grows while it runs.')
flags.DEFINE_enum('compile_for', 'speed', simulate.COMPILE_FOR, 'memory: on '
                  'CPU, compile the round with XLA\'s loop emitters, which '
                  'leaves 80-230 MiB less at peak and is up to 40% slower '
                  'for small models (not for the EMNIST CNN).')
flags.DEFINE_string('profile_dir', None, 'Write a JAX profiler trace of the '
                    'second call (the first compiles) to this folder.')
flags.DEFINE_string('coordinator_address', None, 'Multi-process runs: '
                    'host:port of process 0, which every process joins '
                    '(jax.distributed). `python -m fedjax_engine.launch` sets '
                    'it for processes on this machine.')
flags.DEFINE_integer('num_processes', 1, 'Multi-process runs: processes '
                     'taking part; the cohort is sharded over all their '
                     'devices.')
flags.DEFINE_integer('process_id', 0, 'Multi-process runs: this process, in '
                     '[0, --num_processes); only process 0 writes output and '
                     'shows progress.')
flags.DEFINE_string('data_dir', None, 'Folder holding the dataset\'s files '
                    '(default: the cache, $FEDJAX_ENGINE_DATA or '
                    '~/.cache/fedjax_engine, downloading into it).')
flags.DEFINE_bool('download', True, 'Download missing files into the cache.')
flags.DEFINE_integer('max_clients', None, 'Datasets whose loader takes it '
                     '(stackoverflow_nwp, stackoverflow_tags): load only the '
                     'first this many clients.')
flags.DEFINE_integer('max_examples', None, 'Datasets whose loader takes it '
                     '(stackoverflow_nwp, stackoverflow_tags): keep at most '
                     'this many examples of each client.')
flags.DEFINE_integer('num_clients', 1000, 'synthetic, and centralized '
                     'datasets split by --partition: number of clients.')
flags.DEFINE_enum('partition', 'iid', registry.PARTITIONS, 'How a '
                  'centralized dataset (mnist, fashion_mnist, cifar10, '
                  'cifar100) is split into clients.')
flags.DEFINE_float('dirichlet_alpha', 0.5, '--partition=dirichlet: label '
                   'concentration (smaller is more skewed).')
flags.DEFINE_integer('shards_per_client', 2, '--partition=shards: label-'
                     'sorted shards per client (McMahan et al. 2017).')
flags.DEFINE_float('synthetic_alpha', 1.0, 'synthetic: model heterogeneity.')
flags.DEFINE_float('synthetic_beta', 1.0, 'synthetic: input heterogeneity.')
flags.DEFINE_bool('synthetic_iid', False, 'synthetic: the IID variant.')
flags.DEFINE_float('synthetic_size_log_mean', 4.0, 'synthetic: client sizes '
                   'are --synthetic_min_size + floor(LogNormal(mean, '
                   'sigma)).')
flags.DEFINE_float('synthetic_size_log_sigma', 1.0, 'synthetic: see '
                   '--synthetic_size_log_mean (FedProx\'s generator uses 2).')
flags.DEFINE_integer('synthetic_min_size', 10, 'synthetic: the smallest '
                     'client size (FedProx\'s generator uses 50).')
flags.DEFINE_float('synthetic_test_fraction', 0.2, 'synthetic: fraction of '
                   'each client\'s examples held out for test (FedProx\'s '
                   'generator uses 0.1).')

# Every numeric flag's valid range, checked in one place when the flags are
# parsed: name -> (test, what the message says is expected). None (unset)
# passes for flags whose default is None.
_POSITIVE = (lambda v: math.isfinite(v) and v > 0, 'a finite number > 0')
_NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0,
                 'a finite number >= 0')
_FRACTION = (lambda v: 0 <= v < 1, 'in [0, 1)')
_AT_LEAST_0 = (lambda v: v >= 0, '>= 0')
_AT_LEAST_1 = (lambda v: v >= 1, '>= 1')
_AT_LEAST_2 = (lambda v: v >= 2, '>= 2')
_FINITE = (math.isfinite, 'a finite number')
_UNIT_OPEN_LOW = (lambda v: 0 < v <= 1, 'in (0, 1]')
_UNIT_OPEN = (lambda v: 0 < v < 1, 'in (0, 1)')
_HALF_OPEN = (lambda v: 0 <= v < 0.5, 'in [0, 0.5)')
RANGES = {
    'num_rounds': _AT_LEAST_0, 'clients_per_round': _AT_LEAST_1,
    'local_steps': _AT_LEAST_1, 'local_epochs': _AT_LEAST_1,
    'batch_size': _AT_LEAST_1, 'client_lr': _POSITIVE,
    'client_momentum': _FRACTION, 'server_lr': _POSITIVE,
    'server_momentum': _FRACTION, 'server_beta1': _FRACTION,
    'server_beta2': _FRACTION, 'server_epsilon': _POSITIVE,
    'client_dropout': _FRACTION, 'stragglers': _FRACTION,
    'availability_period': _AT_LEAST_0, 'available_fraction': _UNIT_OPEN_LOW,
    'eval_every': _AT_LEAST_0, 'eval_batch_size': _AT_LEAST_1,
    'finetune_steps': _AT_LEAST_0, 'finetune_lr': _POSITIVE,
    'dp_clip_norm': _POSITIVE, 'dp_noise_multiplier': _NON_NEGATIVE,
    'target_epsilon': _POSITIVE, 'dp_delta': _UNIT_OPEN,
    'dp_target_quantile': _UNIT_OPEN, 'trim_fraction': _HALF_OPEN,
    'num_byzantine': _AT_LEAST_0, 'multi_krum_selected': _AT_LEAST_1,
    'norm_bound': _POSITIVE, 'quantize_bits': _AT_LEAST_1,
    'sparsity_fraction': _UNIT_OPEN_LOW, 'malicious_fraction': _FRACTION,
    'attack_scale': _POSITIVE, 'attack_stddev': _NON_NEGATIVE,
    'attack_boost': _POSITIVE, 'alie_z': _FINITE,
    'secagg_bits': (lambda v: 2 <= v <= 32, 'in [2, 32]'),
    'secagg_clip': _POSITIVE, 'secagg_neighbors': _AT_LEAST_2,
    'secagg_dropout': _FRACTION, 'secagg_threshold': _UNIT_OPEN_LOW,
    'backdoor_target': _AT_LEAST_0, 'backdoor_fraction': _UNIT_OPEN_LOW,
    'seed': _AT_LEAST_0, 'client_chunk_size': _AT_LEAST_1,
    'checkpoint_every': _AT_LEAST_0, 'keep_checkpoints': _AT_LEAST_1,
    'data_seed': _AT_LEAST_0,
    'cpu_devices': _AT_LEAST_0, 'rounds_per_call': _AT_LEAST_1,
    'call_seconds': _POSITIVE,
    'num_processes': _AT_LEAST_1, 'process_id': _AT_LEAST_0,
    'max_clients': _AT_LEAST_1, 'max_examples': _AT_LEAST_1,
    'num_clients': _AT_LEAST_1, 'dirichlet_alpha': _POSITIVE,
    'shards_per_client': _AT_LEAST_1, 'synthetic_alpha': _NON_NEGATIVE,
    'synthetic_beta': _NON_NEGATIVE, 'synthetic_size_log_mean': _FINITE,
    'synthetic_size_log_sigma': _NON_NEGATIVE, 'synthetic_min_size': _AT_LEAST_2,
    'synthetic_test_fraction': _FRACTION,
}
for _name, (_test, _expected) in RANGES.items():
  flags.register_validator(
      _name, lambda v, test=_test: v is None or test(v),
      message=f'--{_name} must be {_expected}')


class UsageError(ValueError):
  """A flag value that cannot work; reported without a traceback."""


def _check(condition, message):
  if not condition:
    raise UsageError(message)


def _data_seed() -> int:
  if FLAGS.data_seed is not None:
    return FLAGS.data_seed
  return int(FLAGS.seeds[0]) if FLAGS.seeds else FLAGS.seed


def _partition(data):
  """Splits a centralized dataset's train set into clients by the flags.

  The test set becomes one evaluation client, so the example-weighted test
  metrics are the usual centralized ones.
  """
  kwargs = dict(num_clients=FLAGS.num_clients, seed=_data_seed())
  if FLAGS.partition == 'dirichlet':
    kwargs['alpha'] = FLAGS.dirichlet_alpha
  elif FLAGS.partition == 'shards':
    kwargs['shards_per_client'] = FLAGS.shards_per_client
  split = getattr(datasets.partition, FLAGS.partition)
  train = split(data.train_x, data.train_y, **kwargs)
  test = data_lib.FederatedData({'x': data.test_x, 'y': data.test_y},
                                [0, len(data.test_y)], ['test'])
  return train, test


def _check_model_fits(model, train):
  """Traces init, apply and loss on two examples, shapes only, so a model
  that cannot take the dataset's examples stops here with one message.

  Two, not one: a size-1 example axis would broadcast against a model's
  extra axis (logits ``[1, 90]`` against labels ``[1, 80]``) unnoticed.
  """
  sample = {k: v[:2] for k, v in train.features.items()}
  n = len(next(iter(sample.values())))
  try:
    params = jax.eval_shape(model.init, jax.random.key(0))
    loss = jax.eval_shape(
        lambda p: model.loss(model.apply(p, sample), sample), params)
    if loss.shape != (n,):
      raise ValueError(f'the loss has shape {loss.shape} on {n} examples, '
                       f'not ({n},) (one value per example)')
  except Exception as e:  # pylint: disable=broad-except
    shapes = {k: v.shape[1:] for k, v in train.features.items()}
    reason = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise UsageError(f'--model={FLAGS.model} does not take the examples of '
                     f'--dataset={FLAGS.dataset} (per-example shapes '
                     f'{shapes}): {reason}') from e


def _build():
  """Turns flags into the experiment's pieces, validating along the way.

  Single flags' ranges are checked at parsing (``RANGES``); this checks
  what depends on several flags or on the data.
  """
  _check(FLAGS.local_steps is None or FLAGS.local_epochs is None,
         'set only one of --local_steps and --local_epochs.')
  local_steps = FLAGS.local_steps
  if local_steps is None and FLAGS.local_epochs is None:
    local_steps = 10
  batching = data_lib.Batching(batch_size=FLAGS.batch_size,
                               local_steps=local_steps,
                               local_epochs=FLAGS.local_epochs)

  factory = registry.resolve(registry.ALGORITHMS, FLAGS.algorithm,
                             kind='algorithm')
  dataset = registry.resolve(registry.DATASETS, FLAGS.dataset, kind='dataset')
  model_factory = registry.resolve(registry.MODELS, FLAGS.model, kind='model')

  if FLAGS.dataset == 'synthetic':
    train, test = dataset.load(
        alpha=FLAGS.synthetic_alpha, beta=FLAGS.synthetic_beta,
        iid=FLAGS.synthetic_iid, num_clients=FLAGS.num_clients,
        size_log_mean=FLAGS.synthetic_size_log_mean,
        size_log_sigma=FLAGS.synthetic_size_log_sigma,
        min_size=FLAGS.synthetic_min_size,
        test_fraction=FLAGS.synthetic_test_fraction, seed=_data_seed())
  else:
    accepted = inspect.signature(dataset.load).parameters
    options = {k: v for k, v in (('data_dir', FLAGS.data_dir),
                                 ('download', FLAGS.download))
               if k in accepted}
    for name in ('max_clients', 'max_examples'):
      value = getattr(FLAGS, name)
      if value is None:
        continue
      _check(name in accepted, f'--{name} is not an option of '
             f'--dataset={FLAGS.dataset}; leave it unset.')
      options[name] = value
    loaded = dataset.load(**options)
    train, test = _partition(loaded) if dataset.centralized else loaded
  _check(FLAGS.clients_per_round <= train.num_clients,
         f'--clients_per_round={FLAGS.clients_per_round} exceeds the '
         f'{train.num_clients} clients of --dataset={FLAGS.dataset}.')
  input_shape = train.features['x'].shape[1:]
  model = model_factory(input_shape=input_shape,
                        num_classes=dataset.num_classes)
  _check_model_fits(model, train)

  def make_algorithm(client_lr, server_lr):
    """The algorithm, its transforms applied, at these learning rates
    (numbers, or traced in a learning-rate sweep)."""
    optimizers = dict(
        client_optimizer=registry.make_optimizer(
            FLAGS.client_optimizer, learning_rate=client_lr,
            momentum=FLAGS.client_momentum),
        server_optimizer=registry.make_optimizer(
            FLAGS.server_optimizer, learning_rate=server_lr,
            momentum=FLAGS.server_momentum, beta1=FLAGS.server_beta1,
            beta2=FLAGS.server_beta2, epsilon=FLAGS.server_epsilon))
    accepted = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in optimizers.items() if k in accepted}
    for h in registry.hyperparameters(factory):
      value = FLAGS[h.name].value
      _check(value is not None, f'--{h.name} is required by '
             f'--algorithm={FLAGS.algorithm}.')
      kwargs[h.name] = value
    try:
      algorithm = factory(model, **kwargs)
    except (ValueError, TypeError) as e:
      raise UsageError(f'--algorithm={FLAGS.algorithm}: {e}') from e
    return _with_transforms(algorithm, train, test, dataset.num_classes)

  algorithm, train_used, more_tests, at_evaluation = make_algorithm(
      FLAGS.client_lr, FLAGS.server_lr)
  for name in ('finetune_steps', 'finetune_lr'):
    _check(FLAGS.personal_eval or not FLAGS[name].value,
           f'--{name} applies to personalized evaluation; add '
           '--personal_eval or leave it unset.')
  if FLAGS.personal_eval:
    _check(np.array_equal(train.client_ids, test.client_ids),
           f'--personal_eval tests each client on its own test examples, but '
           f'--dataset={FLAGS.dataset} has {train.num_clients} training and '
           f'{test.num_clients} test clients that differ.')
  return (algorithm, model, train_used, test, batching, more_tests,
          at_evaluation, lambda **lrs: make_algorithm(**lrs)[0])


def _privacy_spent(rounds, *, noise, plan):
  """What a private run reports at an evaluation after ``rounds`` rounds."""
  spent = (accounting.epsilon(noise_multiplier=noise, rounds=rounds, **plan)
           if rounds else 0.0)
  return {'epsilon': spent, 'delta': plan['delta'], 'noise_multiplier': noise}


def _with_transforms(algorithm, train, test, num_classes):
  """The privacy, robustness, compression and attack flags applied: the
  algorithm with its transforms, the (possibly poisoned) training data, more
  test sets (a backdoor's) and what to add at each evaluation (epsilon)."""
  f = FLAGS
  more_tests, malicious, accountant = {}, None, None
  attacking = f.attack != 'none' or f.data_attack != 'none'
  _check(attacking == (f.malicious_fraction > 0),
         f'--attack={f.attack}, --data_attack={f.data_attack} and '
         f'--malicious_fraction={f.malicious_fraction}: an attack needs '
         'malicious clients, and malicious clients an attack.')
  if attacking:
    malicious = attacks.malicious_clients(
        num_clients=train.num_clients, fraction=f.malicious_fraction,
        seed=f.seed)
  if f.data_attack != 'none':
    _check(f.backdoor_target < num_classes, f'--backdoor_target='
           f'{f.backdoor_target} is not a class of --dataset={f.dataset} '
           f'(0 to {num_classes - 1}).')
    train, backdoor_test = attacks.poison_data(
        train, test, attack=f.data_attack, malicious=malicious,
        num_classes=num_classes, target_label=f.backdoor_target,
        poison_fraction=f.backdoor_fraction, seed=f.seed)
    if backdoor_test is not None:
      more_tests['backdoor'] = backdoor_test
  stages = compression.transforms_from_flags(
      compression=f.compression, bits=f.quantize_bits,
      fraction=f.sparsity_fraction, error_feedback=f.error_feedback)
  if f.dp != 'none':
    _check(f.robust_aggregator == 'mean', f'--dp={f.dp} sums the clipped '
           'updates, so it cannot combine with --robust_aggregator='
           f'{f.robust_aggregator}.')
    _check((f.dp_noise_multiplier is None) != (f.target_epsilon is None),
           f'--dp={f.dp} needs exactly one of --dp_noise_multiplier and '
           '--target_epsilon.')
    _check(not (f.availability_period or f.client_dropout),
           f'--dp={f.dp}: the privacy accounting assumes --clients_per_round '
           'clients drawn uniformly without replacement every round, which '
           '--availability_period and --client_dropout change.')
    delta = f.dp_delta or train.num_clients ** -1.1
    plan = dict(clients_per_round=f.clients_per_round,
                num_clients=train.num_clients, delta=delta, mechanism=f.dp,
                accountant=f.dp_accountant, sampling=f.dp_sampling)
    noise = f.dp_noise_multiplier
    if noise is None:
      noise = accounting.noise_for_epsilon(f.target_epsilon,
                                           rounds=f.num_rounds, **plan)
    stages += privacy.transforms_from_flags(
        dp=f.dp, clip_norm=f.dp_clip_norm, noise_multiplier=noise,
        target_quantile=f.dp_target_quantile,
        clients_per_round=f.clients_per_round, seed=f.seed)

    accountant = functools.partial(_privacy_spent, noise=noise, plan=plan)
  if f.norm_bound:
    # At the server, so that it bounds what attackers send too.
    _check(f.robust_aggregator == 'mean', f'--norm_bound bounds the norms '
           f'of a mean; --robust_aggregator={f.robust_aggregator} has its '
           'own rule.')
    stages.append(robust.as_transform(
        robust.norm_bounded_mean(max_norm=f.norm_bound)))
  # A factory's ValueError names its bad value; main() reports it.
  stages += robust.transforms_from_flags(
      aggregator=f.robust_aggregator, trim_fraction=f.trim_fraction,
      num_byzantine=f.num_byzantine, num_selected=f.multi_krum_selected,
      max_reported=f.clients_per_round)
  if f.attack != 'none':
    defended = transforms.apply(algorithm, *stages).aggregator
    stages += attacks.transforms_from_flags(
        attack=f.attack, malicious=malicious, scale=f.attack_scale,
        stddev=f.attack_stddev, boost=f.attack_boost,
        clients_per_round=f.clients_per_round, z=f.alie_z,
        aggregator=defended)
  if f.diagnostics:
    _check(f.secure_aggregation == 'none', '--diagnostics reads every '
           'client\'s update, which --secure_aggregation='
           f'{f.secure_aggregation} hides from the server.')
    stages.append(diagnostics.diagnostics(
        transforms.apply(algorithm, *stages).aggregator))
  if f.secure_aggregation != 'none':
    stages.append(_secure_aggregation(algorithm, stages))
  return (transforms.apply(algorithm, *stages), train, more_tests,
          accountant)


def _secure_aggregation(algorithm, stages):
  """The secure-aggregation stage, last: every client masks what it would
  send, attackers included."""
  f = FLAGS
  mode = f'--secure_aggregation={f.secure_aggregation}'
  _check(f.robust_aggregator == 'mean' and not f.norm_bound,
         f'{mode} hides every single update, which --robust_aggregator='
         f'{f.robust_aggregator} and --norm_bound need.')
  # Central DP sums the clipped updates (privacy.client_sum), which the
  # survivors' secure sum replaces; otherwise it replaces the mean.
  central_dp = f.dp in ('dp_fedavg', 'dp_ftrl')
  _check(central_dp or transforms.apply(algorithm, *stages).aggregator is
         algorithm_lib.WEIGHTED_MEAN,
         f'{mode} computes a mean or a sum of the clients\' outputs; '
         f'--algorithm={f.algorithm} aggregates them its own way.')
  neighbors = None
  if f.secure_aggregation == 'secagg_plus':
    neighbors = f.secagg_neighbors or 2 * math.ceil(
        math.log2(max(f.clients_per_round, 2)))
    _check(neighbors % 2 == 0, f'--secagg_neighbors={neighbors} must be '
           'even (half on each side of the ring).')
  _check(2 ** (f.secagg_bits - 1) - 1 >= f.clients_per_round,
         f'--secagg_bits={f.secagg_bits} cannot hold a sum of '
         f'--clients_per_round={f.clients_per_round} clients.')
  return secagg.secure_aggregation(
      clip=f.secagg_clip, max_clients=f.clients_per_round,
      bits=f.secagg_bits, neighbors=neighbors,
      dropout_rate=f.secagg_dropout, threshold=f.secagg_threshold,
      mean=not central_dp, seed=f.seed)


def _quiet_jax_startup():
  """Shows warnings and up unless --verbosity asks for more, and silences
  JAX's start-up INFO logs: the backend search ("Unable to initialize
  backend 'tpu'") and the multi-process connection messages.

  Without --verbosity, absl leaves its level to Python's root logger, where
  app.run puts INFO (orbax's checkpoint logs would fill stderr). JAX logs
  on its own Python loggers, which absl's verbosity does not always
  filter; they show again with --verbosity=1 or more.
  """
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if logging.get_verbosity() < 1:
    for name in ('jax._src.xla_bridge', 'jax._src.distributed'):
      py_logging.getLogger(name).setLevel(py_logging.WARNING)


def _enable_compilation_cache():
  """Points JAX's persistent compilation cache at --compilation_cache.

  Must run before the first compile. Every program is kept, however quick
  to compile: the round is worth seconds and the many small ones add up.
  The size bound also turns on JAX's file lock, so runs sharing the folder
  (a sweep's processes, parallel tests) never read a half-written entry.
  """
  folder = FLAGS.compilation_cache
  if not folder:
    return
  folder = os.path.expanduser(folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise UsageError(f'--compilation_cache={FLAGS.compilation_cache!r} is '
                     f'not a folder that can be created ({e.strerror}); give '
                     "another, or '' for none.") from None
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  jax.config.update('jax_compilation_cache_max_size', COMPILATION_CACHE_BYTES)
  # A program the cache cannot store or read (a full disk) is compiled as
  # without a cache; JAX's warning per program would bury the run's output.
  warnings.filterwarnings(
      'ignore', message='Error (writing|reading) persistent compilation cache')


def _set_cpu_devices():
  """Must run before JAX creates its CPU backend (the first device query).

  XLA's collective time-outs keep their defaults: an all-reduce whose
  devices have not all arrived after 20 + 40 s aborts the run rather than
  letting it hang (see ``simulate.settled`` for why none should wait).
  """
  jax.config.update('jax_num_cpu_devices',
                    FLAGS.cpu_devices or os.cpu_count() or 1)


def _init_distributed():
  """Joins the other processes; must run before JAX creates its backends.

  Every process loads the same data and draws the same cohorts from the same
  seed, so no data crosses processes: each trains its shard of the cohort and
  the round's all-reduce combines them.
  """
  count, index = FLAGS.num_processes, FLAGS.process_id
  _check(count == 1 or not (FLAGS.resume or FLAGS.checkpoint_every),
         '--resume and --checkpoint_every need one process: a multi-process '
         'run keeps no checkpoints yet.')
  _check(index < count, f'--process_id must lie in [0, {count}) '
         f'(--num_processes={count}), got {index}.')
  if count == 1:
    return
  address = FLAGS.coordinator_address
  _check(address, '--num_processes > 1 needs --coordinator_address=host:port '
         '(process 0\'s).')
  host, _, port = address.rpartition(':')
  _check(host and port.isdigit(), '--coordinator_address must be host:port, '
         f'got {address!r}.')
  # Gloo over TCP carries the CPU backend's cross-process all-reduce; it
  # must be chosen before the backend exists. Other backends ignore it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=address,
                             num_processes=count, process_id=index)


# How the processes of a run find each other.
_LAYOUT_FLAGS = ('coordinator_address', 'num_processes', 'process_id')
# Flags that may differ between the processes of one run: the rest define the
# experiment, which every process must build identically.
_PER_PROCESS_FLAGS = frozenset(_LAYOUT_FLAGS + ('output_dir', 'output_exists',
                                                'progress', 'data_dir',
                                                'download'))


def _check_same_flags():
  """Stops every process unless all were given the same experiment flags.

  Each process builds the round's whole cohort from its own flags and trains
  its shard; a process with another seed would silently train other clients,
  and one with more rounds would wait forever at an all-reduce.
  """
  module = sys.modules[__name__]
  names = sorted(f.name for f in FLAGS.get_flags_for_module(module)
                 if f.name not in _PER_PROCESS_FLAGS)
  digests = np.stack([np.frombuffer(hashlib.sha256(
      repr(FLAGS[n].value).encode()).digest()[:8], np.uint8) for n in names])
  every = multihost_utils.process_allgather(digests)  # [processes, flags, 8]
  differ = [n for i, n in enumerate(names)
            if (every[:, i] != every[0, i]).any()]
  _check(not differ, 'every process needs the same flags, but these differ '
         'between them: ' + ', '.join(f'--{n}' for n in differ) + '.')


def _exit(code):
  """Exits with ``code``; in a multi-process run, at once.

  ``sys.exit`` would run jax.distributed's shutdown barrier, where a process
  that fails alone waits for peers that wait for it in their next all-reduce
  until the barrier times out (5 minutes, measured). Exiting at once closes
  its connections, so the peers' all-reduces fail at once too.
  """
  if jax.distributed.is_initialized():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


# Flags that say where and how a run is shown or written, not what it
# computes: flags.txt leaves them out, so rerunning from it writes nothing
# into the old folder and asks for its own --output_dir.
_OUTPUT_FLAGS = ('output_dir', 'output_exists', 'progress', 'profile_dir',
                 'resume')
# Flags that change what a run writes (checkpoints, event files), not what
# it computes; a run may be resumed with other values of them.
_CHECKPOINT_FLAGS = ('checkpoint_every', 'keep_checkpoints', 'tensorboard')

# Exit codes besides 0: 2 a bad input (flag, data, output folder), 3 the
# training diverged, 130 interrupted by Ctrl-C (128 + SIGINT, as shells do).
EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def _flags_text() -> str:
  """This program's flags that define the experiment, one per line."""
  module = sys.modules[__name__]
  skip = set(_LAYOUT_FLAGS + _OUTPUT_FLAGS)
  return ''.join(flag.serialize() + '\n' for flag in sorted(
      FLAGS.get_flags_for_module(module), key=lambda f: f.name)
                 if flag.name not in skip and flag.value is not None)


def _identity() -> str:
  """The flags that a resumed run must share with the run it continues."""
  return ''.join(line + '\n' for line in _flags_text().splitlines()
                 if line.lstrip('-').split('=')[0].removeprefix('no')
                 not in _CHECKPOINT_FLAGS)


def _main_exiting_on_error(argv):
  """``main``, with Ctrl-C ending in one line and exit code 130, and an
  unexpected error in a multi-process run ending the process at once (see
  :func:`_exit`)."""
  try:
    main(argv)
  except runner.Interrupted as e:
    where = (f'; their metrics are in '
             f'{os.path.join(FLAGS.output_dir, run_dir.METRICS)}'
             if FLAGS.output_dir and e.rounds else '')
    resume = (' A checkpoint is saved: the same command with --resume goes '
              'on from it.' if e.checkpointed else '')
    print(f'interrupted after {e.rounds} rounds{where}.{resume}',
          file=sys.stderr)
    _exit(EXIT_INTERRUPTED)
  except KeyboardInterrupt:
    print('interrupted before the first round.', file=sys.stderr)
    _exit(EXIT_INTERRUPTED)
  except Exception:  # pylint: disable=broad-except
    if not jax.distributed.is_initialized():
      raise
    traceback.print_exc()
    _exit(1)


def _summary(history) -> dict:
  """The final test metrics, rounded; non-finite values shown as such."""
  final = history[-1] if history else {}
  return {k: round(v, 4) if math.isfinite(v) else v
          for k, v in final.items()
          if k.startswith('test_') and isinstance(v, float)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}', exitcode=2)
  _quiet_jax_startup()
  output_dir = None
  try:
    _set_cpu_devices()
    _enable_compilation_cache()
    _init_distributed()
    if FLAGS.num_processes > 1:
      _check_same_flags()
    _apply_server_defaults()
    # Every process computes the same metrics; one writes them.
    lead = jax.process_index() == 0
    if lead and FLAGS.output_dir:
      output_dir = FLAGS.output_dir
      resuming = FLAGS.resume and os.path.exists(
          os.path.join(output_dir, run_dir.METRICS))
      if not (resuming or _sweeping()):
        moved = run_dir.prepare(output_dir, if_exists=FLAGS.output_exists)
        if moved:
          print(f'moved the earlier run in {output_dir} to {moved}',
                file=sys.stderr)
        run_dir.write_text(output_dir, run_dir.FLAGS, _flags_text())
    if _sweeping():
      _sweep(output_dir)
      return
    (algorithm, model, train, test, batching, more_tests,
     at_evaluation, _) = _build()
    history = runner.run_experiment(
        algorithm, model, train, test, batching=batching,
        clients_per_round=FLAGS.clients_per_round,
        num_rounds=FLAGS.num_rounds, eval_every=FLAGS.eval_every,
        seed=FLAGS.seed, client_chunk_size=FLAGS.client_chunk_size,
        weighting=FLAGS.weighting, gather=FLAGS.gather,
        eval_batch_size=FLAGS.eval_batch_size, output_dir=output_dir,
        rounds_per_call=FLAGS.rounds_per_call,
        call_seconds=FLAGS.call_seconds, compile_for=FLAGS.compile_for,
        profile_dir=FLAGS.profile_dir if lead else None,
        progress=FLAGS.progress and lead, on_nonfinite=FLAGS.nonfinite,
        system=heterogeneity.SystemHeterogeneity(
            dropout_rate=FLAGS.client_dropout,
            straggler_rate=FLAGS.stragglers),
        state_table=FLAGS.state_table, state_table_dir=FLAGS.state_table_dir,
        availability_period=FLAGS.availability_period,
        available_fraction=FLAGS.available_fraction,
        poisson_rate=(FLAGS.clients_per_round / train.num_clients
                      if FLAGS.dp != 'none' and FLAGS.dp_sampling == 'poisson'
                      else None),
        personal_eval=FLAGS.personal_eval,
        finetune_steps=FLAGS.finetune_steps,
        finetune_optimizer=optax.sgd(FLAGS.finetune_lr or FLAGS.client_lr),
        more_tests=more_tests, at_evaluation=at_evaluation,
        checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, resume=FLAGS.resume,
        identity=_identity(), tensorboard=FLAGS.tensorboard)
  except runner.Diverged as e:
    where = (f' Metrics up to round {e.written} are in '
             f'{os.path.join(output_dir, run_dir.METRICS)}.'
             if output_dir else '')
    print(f'error: {e}{where} A smaller learning rate may help; '
          '--nonfinite=warn keeps going.', file=sys.stderr)
    _exit(EXIT_DIVERGED)
  except (UsageError, ValueError, FileNotFoundError,
          download.DownloadError) as e:
    # run_dir.OutputError is a ValueError: a bad or full output folder.
    print(f'error: {e}', file=sys.stderr)
    _exit(EXIT_USAGE)
  seconds = sum(h.get('seconds', 0.0) for h in history)
  print(f'{len(history)} rounds in {seconds:.1f} s on {jax.device_count()} '
        f'{jax.default_backend()} device(s); final: {_summary(history)}')
  if output_dir:
    print(f'metrics: {os.path.join(output_dir, run_dir.METRICS)}')


def _algorithm_name(argv) -> str:
  """The ``--algorithm`` that ``argv`` asks for, flag files included."""
  try:
    args = FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  except flags.Error:
    args = argv[1:]   # absl's parser reports the bad flag file
  name = FLAGS['algorithm'].default
  for i, arg in enumerate(args):
    if arg.startswith('--algorithm='):
      name = arg.split('=', 1)[1]
    elif arg == '--algorithm' and i + 1 < len(args):
      name = args[i + 1]
  return name


_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}


def _define_hyperparameter_flags(argv):
  """One flag per hyperparameter of the chosen algorithm, plug-ins too.

  The algorithm must be known before absl parses the command line, so that
  ``--mu=0.1`` is a flag (listed by ``--helpfull``) and not an unknown one.
  """
  name = _algorithm_name(argv)
  factory = registry.resolve(registry.ALGORITHMS, name, kind='algorithm')
  for h in registry.hyperparameters(factory):
    if h.name in FLAGS:
      raise UsageError(f'hyperparameter {h.name!r} of --algorithm={name} '
                       'has the name of a flag of fedjax_engine.train; '
                       'rename the parameter.')
    _DEFINE[h.type](h.name, h.default, f'--algorithm={name}: {h.help}')


def _owners(flag_name) -> list[str]:
  return [n for n, f in sorted(registry.ALGORITHMS.items())
          if any(h.name == flag_name for h in registry.hyperparameters(f))]


def _parse_flags(argv):
  """absl's parser, but a bad flag exits with code 2 and one line, and a
  hyperparameter of another algorithm says so."""
  try:
    _define_hyperparameter_flags(argv)
    return FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    owners = _owners(e.flagname)
    if owners:
      taken = [h.name for h in registry.hyperparameters(registry.resolve(
          registry.ALGORITHMS, _algorithm_name(argv), kind='algorithm'))]
      print(f'error: --{e.flagname} is not a hyperparameter of '
            f'--algorithm={_algorithm_name(argv)} (it takes '
            f'{", ".join("--" + t for t in taken) or "none"}); '
            f'--{e.flagname} is one of {", ".join(owners)}.',
            file=sys.stderr)
    else:
      print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  except (flags.Error, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _apply_server_defaults():
  """``--algorithm=fedadam`` and its kin set their server optimizer flags
  (``registry.SERVER_DEFAULTS``) unless the command line sets them; a
  contradicting ``--server_optimizer`` is refused."""
  defaults = registry.SERVER_DEFAULTS.get(FLAGS.algorithm, {})
  for name, value in defaults.items():
    flag = FLAGS[name]
    if not flag.present:
      flag.value = value
    elif name == 'server_optimizer' and flag.value != value:
      raise UsageError(
          f'--algorithm={FLAGS.algorithm} is fedavg with '
          f'--server_optimizer={value}, not {flag.value}; drop '
          f'--server_optimizer or use --algorithm=fedavg.')


# What a sweep cannot share between its seeds, or does not do.
_NOT_IN_SWEEPS = (
    ('dp', 'none', 'its noise is seeded by --seed'),
    ('secure_aggregation', 'none', 'its masks are seeded by --seed'),
    ('malicious_fraction', 0.0, 'the malicious clients are drawn from --seed'),
    ('state_table', 'device', 'a sweep keeps the tables on the device'),
    ('gather', 'device', 'a sweep keeps the examples on the device'),
    ('availability_period', 0, 'a sweep samples clients uniformly'),
    ('personal_eval', False, 'a sweep evaluates the global models'),
    ('resume', False, 'a sweep takes no checkpoints to resume from'),
    ('checkpoint_every', 0, 'a sweep takes no checkpoints along the way'),
    ('num_processes', 1, 'a sweep runs in one process'),
)


def _numbers(name, parse, what):
  """The values of list flag ``--name``, distinct, parsed by ``parse``."""
  values = FLAGS[name].value
  try:
    parsed = [parse(v) for v in values]
  except ValueError:
    raise UsageError(f'--{name} must be {what}, got {",".join(values)}.'
                     ) from None
  _check(len(set(parsed)) == len(parsed), f'--{name} must be distinct, got '
         f'{",".join(values)}.')
  return parsed


def _sweeping() -> bool:
  return bool(FLAGS.seeds or FLAGS.client_lrs or FLAGS.server_lrs)


def _sweep(output_dir):
  """``--seeds``, ``--client_lrs``, ``--server_lrs``: the runs together
  (:mod:`fedjax_engine.sweep`), each run's folder with the flags that rerun
  it alone."""
  given = ' '.join(f'--{n}={",".join(FLAGS[n].value)}'
                   for n in ('seeds', 'client_lrs', 'server_lrs')
                   if FLAGS[n].value)
  seeds = _numbers('seeds', int, 'integers') if FLAGS.seeds else [FLAGS.seed]
  _check(min(seeds) >= 0, f'--seeds must be integers >= 0, got {seeds}.')
  grid = {}
  for name in ('client_lrs', 'server_lrs'):
    if FLAGS[name].value:
      grid[name[:-1]] = _numbers(name, float, 'numbers')
      _check(min(grid[name[:-1]]) > 0, f'--{name} must be positive, got '
             f'{",".join(FLAGS[name].value)}.')
  points = [dict(zip(grid, values))
            for values in itertools.product(*grid.values())] if grid else None
  _check(FLAGS.num_rounds >= 1, f'{given} needs --num_rounds >= 1.')
  for name, allowed, why in _NOT_IN_SWEEPS:
    _check(FLAGS[name].value == allowed, f'{given} cannot combine with '
           f'--{name}={FLAGS[name].value}: {why}.')
  data_seed = _data_seed()
  (algorithm, model, train, test, batching, more_tests, at_evaluation,
   make_algorithm) = _build()
  _check(not more_tests, 'a sweep evaluates the test set only.')
  if points:
    lrs = {'client_lr': FLAGS.client_lr, 'server_lr': FLAGS.server_lr}
    algorithm = lambda **point: make_algorithm(**{**lrs, **point})
  runs = [(point, s) for point in points or [{}] for s in seeds]
  if output_dir:
    chosen = {n: FLAGS[n].value for n in (
        'seed', 'data_seed', 'seeds', 'client_lrs', 'server_lrs',
        'client_lr', 'server_lr')}
    try:
      for point, s in runs:
        folder = sweep.run_folder(output_dir, s, point)
        run_dir.prepare(folder, if_exists=FLAGS.output_exists)
        FLAGS.seed, FLAGS.data_seed = s, data_seed
        FLAGS.seeds = FLAGS.client_lrs = FLAGS.server_lrs = None
        for name, value in point.items():
          FLAGS[name].value = value
        run_dir.write_text(folder, run_dir.FLAGS, _flags_text())
    finally:
      for name, value in chosen.items():
        FLAGS[name].value = value
  histories = sweep.run_sweep(
      algorithm, model, train, test, seeds=seeds, hyperparameters=points,
      batching=batching,
      clients_per_round=FLAGS.clients_per_round, num_rounds=FLAGS.num_rounds,
      eval_every=FLAGS.eval_every, client_chunk_size=FLAGS.client_chunk_size,
      weighting=FLAGS.weighting, eval_batch_size=FLAGS.eval_batch_size,
      output_dir=output_dir, rounds_per_call=FLAGS.rounds_per_call,
      call_seconds=FLAGS.call_seconds, compile_for=FLAGS.compile_for,
      progress=FLAGS.progress,
      system=heterogeneity.SystemHeterogeneity(
          dropout_rate=FLAGS.client_dropout, straggler_rate=FLAGS.stragglers),
      at_evaluation=at_evaluation)
  seconds = sum(h.get('seconds', 0.0) for h in histories[0])
  print(f'{len(runs)} runs x {FLAGS.num_rounds} rounds in {seconds:.1f} s '
        f'on {jax.device_count()} {jax.default_backend()} device(s)')
  for (point, s), history in zip(runs, histories):
    where = (f'; {os.path.join(sweep.run_folder(output_dir, s, point), run_dir.METRICS)}'
             if output_dir else '')
    name = f'{sweep.point_name(point)} ' if point else ''
    print(f'{name}seed {s}: final: {_summary(history)}{where}')


def _evaluate_saved(argv):
  """``python -m fedjax_engine.evaluate_run RUN_DIR [--flag=value ...]``."""
  _quiet_jax_startup()
  try:
    _set_cpu_devices()
    _apply_server_defaults()
    _, model, _, test, *_ = _build()
    params = checkpoint.load_params(
        argv[1], like=model.init(jax.random.key(FLAGS.seed)))
    rounds = checkpoint.Checkpoints(argv[1]).latest()
    scores = evaluate_lib.make_evaluate(
        model, test, batch_size=FLAGS.eval_batch_size)(params)
  except (UsageError, ValueError, FileNotFoundError,
          download.DownloadError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  scores = {f'test_{k}': round(float(v), 4) for k, v in scores.items()}
  print(f'{argv[1]}: the model after {rounds} rounds on --dataset='
        f'{FLAGS.dataset}: {json.dumps(scores)}')


def _parse_saved_run(argv):
  """The flags of the run in ``argv[1]`` (its flags.txt), then ``argv[2:]``
  over them (another --data_dir, a test set of another --dataset)."""
  if len(argv) < 2 or argv[1].startswith('-'):
    print('error: usage: python -m fedjax_engine.evaluate_run RUN_DIR '
          '[--flag=value ...]', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  saved = os.path.join(argv[1], run_dir.FLAGS)
  if not os.path.isfile(saved):
    print(f'error: {argv[1]} is not a run folder: it has no {run_dir.FLAGS}.',
          file=sys.stderr)
    sys.exit(EXIT_USAGE)
  _parse_flags([argv[0], f'--flagfile={saved}', *argv[2:]])
  return argv[:2]


def evaluate_saved_run():
  """Evaluates the model a run saved (its latest checkpoint) on the test
  split of its dataset, or of the dataset that later flags name."""
  FLAGS.set_default('verbosity', logging.WARNING)
  app.run(_evaluate_saved, flags_parser=_parse_saved_run)


def run():
  # Show warnings and up unless --verbosity asks for more.
  FLAGS.set_default('verbosity', logging.WARNING)
  app.run(_main_exiting_on_error, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
