"""Two processes joined by ``jax.distributed`` give the one-process result.

``python -m fedjax_engine.launch`` starts two trainers on 127.0.0.1 that
shard each round's cohort over both processes' devices (one each) and
combine them with a cross-process all-reduce over gloo (TCP). The metrics
that process 0 writes must equal those of one process sharding the same
cohort over two devices, and over one.

Tolerance: the engine is deterministic, so only float32 summation order can
differ: with one device the cohort's sums are accumulated in one sequence,
with two each device sums its half and the all-reduce adds the halves. That
moves results by a few ulps (float32 eps is 1.2e-7) per round;
rtol=1e-5, atol=1e-6 allows about 100 ulps, as the conformance suite's
device-count test does, while anything that trains on other clients or
batches (another seed, a lost shard) moves the losses by more than 1e-3.

The runs are small (4 rounds of logistic regression) and start together:
JAX's start-up and compilation are most of their time.
"""

import json
import os
import pathlib
import subprocess
import sys

from absl.testing import flagsaver
import numpy as np
import pytest

from fedjax_engine import launch
from fedjax_engine import train

REPO = pathlib.Path(__file__).resolve().parents[1]
# Nine clients on two devices: each holds five, one of them padding.
TRAIN_FLAGS = ('--dataset=synthetic', '--model=logistic',
               '--num_clients=24', '--clients_per_round=9', '--num_rounds=4',
               '--eval_every=2', '--local_steps=3', '--batch_size=8',
               '--seed=3', '--noprogress')
RTOL, ATOL = 1e-5, 1e-6
TIMEOUT_S = 240


def _gloo_missing() -> bool:
  """True when this jaxlib cannot build gloo CPU collectives (what
  ``jax_cpu_collectives_implementation='gloo'`` asks for)."""
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False  # Layout unknown: let the run itself tell.
  return not hasattr(_jax, 'make_gloo_tcp_collectives')


pytestmark = pytest.mark.skipif(
    _gloo_missing(), reason='this jaxlib has no gloo CPU collectives, which '
    'two-process runs on CPU need')


def _env():
  """This checkout's package, on the machine's own CPU devices.

  conftest.py forces 4 host devices through XLA_FLAGS; the runs here set
  their device count with --cpu_devices instead. Its other XLA flags (fast
  compilation) are kept, the same for every run.
  """
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(
      f for f in env.get('XLA_FLAGS', '').split()
      if not f.startswith('--xla_force_host_platform_device_count'))
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (str(REPO), env.get('PYTHONPATH')) if p)
  return env


def _start(module, *args, cwd):
  return subprocess.Popen([sys.executable, '-m', module, *args], cwd=cwd,
                          env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(proc):
  """Waits for ``proc``; returns ``(exit code, stdout, stderr)``."""
  try:
    out, err = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
  return proc.returncode, out, err


def _metrics(folder):
  with open(folder / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The two-process run's output folder and launcher output, and the
  one-process runs' folders. All three run at once: each spends most of its
  time starting JAX and compiling on one core."""
  root = tmp_path_factory.mktemp('multiprocess')
  procs = {'two_processes': _start(
      'fedjax_engine.launch', '--num_processes=2', '--', *TRAIN_FLAGS,
      '--cpu_devices=1', f'--output_dir={root / "two_processes"}', cwd=root)}
  for devices in (1, 2):
    name = f'one_process_{devices}_devices'
    procs[name] = _start('fedjax_engine.train', *TRAIN_FLAGS,
                         f'--cpu_devices={devices}',
                         f'--output_dir={root / name}', cwd=root)
  out = {}
  for name, proc in procs.items():
    code, stdout, stderr = _finish(proc)
    assert code == 0, f'{name}:\n{stdout}\n{stderr}'
    out[name] = root / name
    if name == 'two_processes':
      out['launcher_output'] = stdout
  return out


@pytest.mark.parametrize('devices', [2, 1])
def test_two_processes_match_one_process(runs, devices):
  two = _metrics(runs['two_processes'])
  one = _metrics(runs[f'one_process_{devices}_devices'])
  assert [r['round'] for r in two] == [r['round'] for r in one] == [1, 2, 3, 4]
  for got, want in zip(two, one):
    assert got['clients'] == want['clients'] == 9
    # The training and test metrics; others (wall time, padding efficiency)
    # describe the run, not the model.
    keys = sorted(k for k in want if k == 'train_loss' or
                  k.startswith('test_'))
    assert keys == sorted(k for k in got if k == 'train_loss' or
                          k.startswith('test_'))
    for key in keys:
      np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL,
                                 err_msg=f'round {want["round"]}: {key}')
  assert 'test_accuracy' in two[-1] and 'test_loss_per_client' in two[1]


def test_both_processes_ran_and_only_process_zero_wrote(runs):
  lines = runs['launcher_output'].splitlines()
  for i in (0, 1):
    # Each process ran every round on both processes' devices.
    assert any(l.startswith(f'[p{i}] 4 rounds in') and
               'on 2 cpu device(s)' in l for l in lines), lines
  folder = runs['two_processes']
  assert sorted(p.name for p in folder.iterdir()) == ['flags.txt',
                                                      'metrics.jsonl']
  assert len(_metrics(folder)) == 4  # one writer, not two appending
  # flags.txt reruns the experiment in one process: no process layout.
  saved = (folder / 'flags.txt').read_text()
  assert '--seed=3' in saved and '--num_clients=24' in saved
  for name in ('coordinator_address', 'num_processes', 'process_id'):
    assert f'--{name}' not in saved


# An algorithm plug-in that only process 1 rejects.
_FAILING_PLUGIN = """
import jax
from fedjax_engine import algorithms

def build(model, *, client_optimizer):
  if jax.process_index() == 1:
    raise ValueError('process 1 rejects this run')
  return algorithms.fedavg(model, client_optimizer=client_optimizer)
"""


def test_one_failing_process_stops_the_launch(tmp_path):
  (tmp_path / 'one_fails.py').write_text(_FAILING_PLUGIN)
  code, out, err = _finish(_start(
      'fedjax_engine.launch', '--num_processes=2', '--', *TRAIN_FLAGS,
      '--algorithm=one_fails:build', cwd=tmp_path))
  # Process 1 exits at once with train's code for a bad value; process 0,
  # waiting for it at the first all-reduce, is stopped. (Had process 1
  # waited in JAX's shutdown barrier instead, process 0 would have failed
  # first, after a 30 s gloo timeout, with code 1.)
  assert code == 2, out + err
  assert ('[p1] error: --algorithm=one_fails:build: process 1 rejects this '
          'run') in out
  assert '[launch] process 1 exited with code 2; stopping the others.' in err
  assert '[p0] 4 rounds in' not in out


def test_processes_with_different_flags_all_stop(tmp_path):
  # Started by hand, as on two machines; process 1 has another seed.
  address = f'127.0.0.1:{launch.free_port()}'
  procs = [_start('fedjax_engine.train', *TRAIN_FLAGS, f'--seed={i}',
                  f'--coordinator_address={address}', '--num_processes=2',
                  f'--process_id={i}', cwd=tmp_path) for i in (0, 1)]
  for proc in procs:
    code, _, err = _finish(proc)
    assert code == 2, err
    assert err.strip().endswith(
        'error: every process needs the same flags, but these differ '
        'between them: --seed.'), err


@pytest.mark.parametrize('flag_values, message', [
    (dict(num_processes=2, process_id=2,
          coordinator_address='127.0.0.1:1234'),
     '--process_id must lie in [0, 2) (--num_processes=2), got 2.'),
    (dict(num_processes=2, process_id=1), 'needs --coordinator_address'),
    (dict(num_processes=2, coordinator_address='localhost'),
     "--coordinator_address must be host:port, got 'localhost'."),
])
def test_train_rejects_bad_process_flags(flag_values, message):
  # Checked before anything starts; main() prints the message and exits 2
  # as for every UsageError (tests/test_train_cli.py).
  if not train.FLAGS.is_parsed():
    train.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(**flag_values):
    with pytest.raises(train.UsageError) as e:
      train._init_distributed()  # pylint: disable=protected-access
  assert message in str(e.value)


def test_launcher_rejects_flags_it_sets(capsys):
  assert launch.main(['--', '--process_id=1']) == 2
  assert capsys.readouterr().err == (
      'error: --process_id=1 is set by the launcher; leave it out of the '
      'flags after --.\n')
