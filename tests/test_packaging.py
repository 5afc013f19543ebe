"""Packaging: namespaces, public API, and the docstring examples."""

import doctest
import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

import fedjax_engine as fe

REPO = pathlib.Path(__file__).resolve().parents[1]
DIST = 'fedjax-engine'


def test_subpackages_import_under_namespace():
  algorithms = importlib.import_module('fedjax_engine.algorithms')
  datasets = importlib.import_module('fedjax_engine.datasets')
  assert callable(algorithms.fedavg) and callable(algorithms.fedsgd)
  assert callable(datasets.synthetic)
  assert fe.algorithms is algorithms and fe.datasets is datasets
  assert algorithms.__name__ == 'fedjax_engine.algorithms'
  assert datasets.__name__ == 'fedjax_engine.datasets'
  # Their folders are named after them (the repository's top-level folders
  # in an editable install, fedjax_engine/<name> in a wheel).
  assert pathlib.Path(algorithms.__file__).parent.name == 'algorithms'
  assert pathlib.Path(datasets.__file__).parent.name == 'datasets'
  # Importing the engine did not import anything under a top-level name.
  for name in ('algorithms', 'datasets'):
    module = sys.modules.get(name)
    if module is not None and getattr(module, '__file__', None):
      assert not pathlib.Path(module.__file__).resolve().is_relative_to(
          REPO.resolve()), module


@pytest.mark.parametrize('name', ['datasets', 'algorithms'])
def test_no_top_level_package_shadowing(name, tmp_path):
  # From a neutral directory, `import datasets` must be Hugging Face's (or
  # fail): never this project's folder.
  code = (f'import {name}, os; print("FILE=" + os.path.realpath('
          f'getattr({name}, "__file__", None) or "<namespace>"))')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  if proc.returncode != 0:
    assert ('ModuleNotFoundError' in proc.stderr or
            'ImportError' in proc.stderr), proc.stderr
    return
  line = [l for l in proc.stdout.splitlines() if l.startswith('FILE=')][-1]
  path = line[len('FILE='):]
  assert path != '<namespace>', f'{name} imported as a namespace package'
  assert not pathlib.Path(path).resolve().is_relative_to(REPO.resolve()), path


def test_checkout_imports_from_the_repository_root():
  # `pip install . && python -m fedjax_engine.train` from the repository
  # root imports the checkout (the root is first on sys.path), not the
  # installed wheel; algorithms/ and datasets/ must resolve beside it. The
  # editable install's finder, which would also resolve them, is removed.
  code = ('import sys; sys.meta_path[:] = [f for f in sys.meta_path '
          'if "editable" not in repr(f).lower()]; '
          'import fedjax_engine.train, fedjax_engine as fe; '
          'print(fe.algorithms.__file__); print(fe.datasets.__file__)')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  paths = [pathlib.Path(l) for l in proc.stdout.split()[-2:]]
  assert paths == [REPO / 'algorithms' / '__init__.py',
                   REPO / 'datasets' / '__init__.py'], paths


def test_distribution_installs_only_fedjax_engine():
  dists = list(importlib.metadata.distributions(name=DIST))
  assert dists, f'{DIST} is not installed'
  checked_record = False
  for dist in dists:
    top_level = dist.read_text('top_level.txt')
    if top_level is not None:
      assert top_level.split() == ['fedjax_engine'], top_level
    # RECORD (dist-info) lists installed paths; an in-tree egg-info lists
    # source paths (SOURCES.txt) instead, which say nothing about what is
    # installed, so only RECORD is checked.
    if dist.read_text('RECORD') is None:
      continue
    checked_record = True
    for f in dist.files or ():
      parts = pathlib.PurePosixPath(str(f)).parts
      assert parts[0] not in ('datasets', 'algorithms'), f
      if str(f).endswith('_finder.py'):
        # An editable install maps import names to folders: only names in
        # the fedjax_engine namespace may be mapped.
        text = pathlib.Path(f.locate()).read_text()
        assert "'datasets'" not in text and "'algorithms'" not in text
        assert "'fedjax_engine.datasets'" in text
  if not checked_record:
    pytest.skip('no installed RECORD to inspect (pyproject is checked below)')


def test_pyproject_declares_namespaced_packages():
  config = tomllib.loads((REPO / 'pyproject.toml').read_text())
  setuptools = config['tool']['setuptools']
  packages = setuptools['packages']
  assert all(p == 'fedjax_engine' or p.startswith('fedjax_engine.')
             for p in packages), packages
  assert {'fedjax_engine.algorithms', 'fedjax_engine.datasets'} <= set(
      packages)
  assert setuptools['package-dir'] == {
      'fedjax_engine.algorithms': 'algorithms',
      'fedjax_engine.datasets': 'datasets'}
  assert config['project']['name'] == DIST


PUBLIC = [
    'tree', 'Aggregator', 'weighted_mean', 'Algorithm', 'Mean', 'RoundInfo',
    'ServerState', 'local_training', 'masked_loss', 'over_steps',
    'server_optimizer_step', 'sampling',
    'Batching', 'Cohort', 'DeviceData', 'FederatedData', 'Model', 'accuracy',
    'from_linen', 'from_nnx', 'softmax_cross_entropy', 'Round', 'make_round',
    'Evaluator', 'make_evaluate', 'models', 'algorithms', 'datasets',
    'PersonalEvaluator', 'make_personal_evaluate', 'host_table', 'testing',
    'heterogeneity', 'SystemHeterogeneity', 'aggregate', 'transforms',
    'privacy', 'robust', 'compression', 'attacks',
]


@pytest.mark.parametrize('name', PUBLIC)
def test_public_names(name):
  assert hasattr(fe, name), name
  assert getattr(fe, name) is not None


def test_version_matches_metadata():
  assert fe.__version__ == importlib.metadata.version(DIST)


def test_model_zoo_exports():
  factories = {'logistic_regression', 'mlp', 'emnist_cnn', 'femnist_cnn',
               'char_lstm', 'stackoverflow_lstm', 'resnet18_gn',
               'transformer_lm', 'multilabel_logistic_regression',
               'sent140_lstm'}
  assert set(fe.models.__all__) == factories | {'sequence'}
  for name in factories:
    assert callable(getattr(fe.models, name))


def _modules():
  """Every module of the three packages, by its installed name."""
  roots = [(REPO / 'fedjax_engine', 'fedjax_engine'),
           (REPO / 'fedjax_engine' / 'models', 'fedjax_engine.models'),
           (REPO / 'algorithms', 'fedjax_engine.algorithms'),
           (REPO / 'datasets', 'fedjax_engine.datasets')]
  names = []
  for folder, package in roots:
    for path in sorted(folder.glob('*.py')):
      if path.name == '__init__.py':
        names.append(package)
      elif path.stem != '__main__':
        names.append(f'{package}.{path.stem}')
  return names


MODULES = _modules()


def test_module_list_is_complete():
  for expected in ('fedjax_engine.data', 'fedjax_engine.model',
                   'fedjax_engine.models.dense',
                   'fedjax_engine.algorithms.fedavg',
                   'fedjax_engine.datasets.synthetic'):
    assert expected in MODULES


@pytest.mark.parametrize('module_name', MODULES)
def test_docstring_examples(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, verbose=False, report=True,
                           optionflags=doctest.ELLIPSIS)
  assert result.failed == 0, (
      f'{result.failed} of {result.attempted} doctest examples failed in '
      f'{module_name} (see captured stdout)')
