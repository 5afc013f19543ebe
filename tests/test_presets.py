"""The flag files in benchmarks/presets/ parse, and run where data is here.

Every preset is parsed against the flags of ``fedjax_engine.train`` (its
algorithm's hyperparameter flags included) on a copy of them, so a renamed
flag or a value out of range fails here rather than in a user's run. Then
one preset of each dataset and model whose data is generated or lies in
../shared/data trains one round through the CLI: presets that share both
differ only in optimizer flags, which parsing checks, and each run costs
its start-up and compilations (about 5 to 15 s each on 2 cores). To stay
fast, that round runs on a few clients: the real files are cut down to
three clients each, and two train per round.
"""

import copy
import os
import pathlib
import subprocess
import sys

from absl import flags
import h5py
import pytest

from fedjax_engine import registry
from fedjax_engine import train

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESETS_DIR = REPO / 'benchmarks' / 'presets'
PRESETS = sorted(PRESETS_DIR.glob('*.txt'))
SHARED_DATA = REPO.parent / 'shared' / 'data'

# The TFF-layout datasets whose real files ../shared/data holds, by the
# folder and the file names the loader reads there.
H5_DATA = {
    'emnist': ('femnist', ('fed_emnist_train.h5', 'fed_emnist_test.h5')),
    'shakespeare': ('shakespeare', ('shakespeare_train.h5',
                                    'shakespeare_test.h5')),
}
# LEAF's JSON folders, small enough to read whole.
LEAF_DATA = {'leaf_femnist': 'femnist/leaf_json_sample'}
# Clients kept from each real file, and trained per round.
CLIENTS = 3
CLIENTS_PER_ROUND = 2

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}


def test_there_are_presets():
  assert PRESETS, f'{PRESETS_DIR} has no flag files'


def _args(path) -> list[str]:
  """The preset's flags, one per line as written, blank lines left out."""
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip()]


def _parsed(path) -> flags.FlagValues:
  """The preset parsed on a copy of train's flags (the global ones stay
  untouched), with its algorithm's hyperparameter flags defined first as the
  CLI defines them; range validators travel with the copied flags."""
  fresh = flags.FlagValues()
  for flag in train.FLAGS.get_flags_for_module(train):
    fresh[flag.name] = copy.deepcopy(flag)
  algorithm = fresh['algorithm'].default
  for arg in _args(path):
    if arg.startswith('--algorithm='):
      algorithm = arg.split('=', 1)[1]
  factory = registry.resolve(registry.ALGORITHMS, algorithm, kind='algorithm')
  for h in registry.hyperparameters(factory):
    if h.name not in fresh:
      _DEFINE[h.type](h.name, h.default, h.help, flag_values=fresh)
  fresh(['prog', f'--flagfile={path}'])
  return fresh


@pytest.mark.parametrize('path', PRESETS, ids=lambda p: p.name)
def test_preset_parses(path):
  args = _args(path)
  assert all(a.startswith('--') and '=' in a for a in args), args
  names = [a[2:].split('=', 1)[0] for a in args]
  assert len(names) == len(set(names)), f'a flag is set twice in {path.name}'
  parsed = _parsed(path)
  registry.resolve(registry.DATASETS, parsed.dataset, kind='dataset')
  registry.resolve(registry.MODELS, parsed.model, kind='model')
  # A preset is run into a folder of the user's choosing.
  assert not {'output_dir', 'output_exists'} & set(names)
  # --algorithm=fedadam and its kin refuse another server optimizer.
  implied = registry.SERVER_DEFAULTS.get(parsed.algorithm, {})
  if 'server_optimizer' in names and 'server_optimizer' in implied:
    assert parsed.server_optimizer == implied['server_optimizer']


def test_every_preset_has_a_readme_row():
  readme = (PRESETS_DIR / 'README.md').read_text()
  missing = [p.name for p in PRESETS if f'`{p.name}`' not in readme]
  assert not missing, f'benchmarks/presets/README.md lacks {missing}'


def _h5_subset(source, target):
  """Copies the first CLIENTS clients of a TFF train/test file pair."""
  with h5py.File(source[0], 'r') as f:
    ids = sorted(f['examples'])[:CLIENTS]
  for src, dst in zip(source, target):
    with h5py.File(src, 'r') as fin, h5py.File(dst, 'w') as fout:
      group = fout.create_group('examples')
      for cid in ids:
        if cid in fin['examples']:
          fin.copy(fin['examples'][cid], group, name=cid)


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
  """``dataset -> data_dir`` for the datasets ../shared/data holds."""
  dirs = {}
  for dataset, (folder, names) in H5_DATA.items():
    source = [SHARED_DATA / folder / n for n in names]
    if all(p.exists() for p in source):
      target = tmp_path_factory.mktemp(dataset)
      _h5_subset(source, [target / n for n in names])
      dirs[dataset] = target
  for dataset, folder in LEAF_DATA.items():
    if (SHARED_DATA / folder).is_dir():
      dirs[dataset] = SHARED_DATA / folder
  return dirs


def _one_per_dataset_and_model(paths):
  chosen = {}
  for path in paths:
    named = dict(a[2:].split('=', 1) for a in _args(path))
    chosen.setdefault((named.get('dataset'), named.get('model')), path)
  return sorted(chosen.values())


@pytest.mark.parametrize('path', _one_per_dataset_and_model(PRESETS),
                         ids=lambda p: p.name)
def test_preset_runs_one_round(path, data_dirs, tmp_path):
  dataset = _parsed(path).dataset
  extra = []
  if dataset != 'synthetic':
    if dataset not in data_dirs:
      pytest.skip(f'no copy of --dataset={dataset} in {SHARED_DATA}')
    extra = [f'--data_dir={data_dirs[dataset]}', '--nodownload']
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the CLI runs on the machine's real devices
  out = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'fedjax_engine.train', f'--flagfile={path}',
       *extra, '--num_rounds=1', f'--clients_per_round={CLIENTS_PER_ROUND}',
       '--noprogress', f'--output_dir={out}'],
      capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'test_accuracy' in result.stdout
  assert (out / 'metrics.jsonl').read_text().count('\n') == 1
