"""CIFAR-10 and CIFAR-100 (centralized), and TFF's federated CIFAR-100.

Centralized CIFAR (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html)
comes from the "python version" archives:

* ``cifar-10-python.tar.gz``: ``cifar-10-batches-py/data_batch_1`` ...
  ``data_batch_5`` (train) and ``test_batch``;
* ``cifar-100-python.tar.gz``: ``cifar-100-python/train`` and ``test``.

Each batch is a pickled dict with ``b'data'``, uint8 ``[N, 3072]`` holding
each image's red, green and blue 32x32 planes one after the other (CHW), and
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'``
(CIFAR-100), lists of N ints. A loader takes the archive (read in place:
nothing is extracted) or its extracted folder from ``data_dir``, or the
archive from the download cache (``<cache>/cifar10/``, ``<cache>/cifar100/``),
downloading and checking it there when allowed. The pickles are read with an
unpickler that only builds dicts, lists, strings, bytes, numbers and numpy
arrays, so a crafted file cannot run code.

Federated CIFAR-100 is TensorFlow Federated's split (``fed_cifar100.tar.bz2``
holding ``fed_cifar100_train.h5`` and ``fed_cifar100_test.h5``): 500 train
clients with ids ``'0'``..``'499'`` and 100 test clients with ids
``'0'``..``'99'``, 100 images each, partitioned by a two-level LDA over the
coarse and fine labels. Each file holds ``examples/<client_id>/image`` uint8
``[n, 32, 32, 3]``, ``label`` (fine, 0-99) and ``coarse_label`` (0-19).

Example (a tiny CIFAR-10 folder written on the spot):

  >>> import os, pickle, tempfile
  >>> import numpy as np
  >>> folder = os.path.join(tempfile.mkdtemp(), 'cifar-10-batches-py')
  >>> os.makedirs(folder)
  >>> for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
  ...   batch = {b'data': np.full((2, 3072), 255, np.uint8), b'labels': [3, 4]}
  ...   with open(os.path.join(folder, name), 'wb') as f:
  ...     pickle.dump(batch, f, protocol=2)
  >>> data = cifar10(data_dir=os.path.dirname(folder))
  >>> data.train_x.shape, data.train_y[:4].tolist(), data.num_classes
  ((10, 32, 32, 3), [3, 4, 3, 4], 10)
"""

import os
import pickle

import numpy as np

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import download as _download
from fedjax_engine.datasets.mnist import Centralized

IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3

# sha256 of the archives as published by Keras (keras/src/datasets/cifar10.py
# and cifar100.py, ``file_hash``) and by torchvision's prototype datasets
# (torchvision/prototype/datasets/_builtin/cifar.py, ``sha256=``); the dataset
# page publishes md5 digests (also in torchvision/datasets/cifar.py).
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR10_SHA256 = (
    '6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce')
CIFAR10_MD5 = 'c58f30108f718f92721af3b95e74349a'
CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
CIFAR100_SHA256 = (
    '85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7')
CIFAR100_MD5 = 'eb9058c3a382ffc7106e4002c42a8d85'

# TensorFlow Federated, tensorflow_federated/python/simulation/datasets/
# cifar100.py (v0.13.1): ``get_file(..., file_hash=..., hash_algorithm=
# 'sha256')``.
FED_CIFAR100_URL = (
    'https://storage.googleapis.com/tff-datasets-public/fed_cifar100.tar.bz2')
FED_CIFAR100_SHA256 = (
    'e8575e22c038ecef1ce6c7d492d7abee7da13b1e1ba9b70a7fc18531ba7590de')
FED_CIFAR100_FILES = {'train': 'fed_cifar100_train.h5',
                      'test': 'fed_cifar100_test.h5'}

_LABEL_MODES = {'fine': (b'fine_labels', 'label', 100),
                'coarse': (b'coarse_labels', 'coarse_label', 20)}


def cifar10(*, data_dir: str | None = None,
            download: bool = True) -> Centralized:
  """CIFAR-10: 50,000 train and 10,000 test 32x32 colour images, 10 classes.

  Args:
    data_dir: a folder holding ``cifar-10-python.tar.gz`` or the extracted
      ``cifar-10-batches-py/`` (or being that folder); when given, nothing is
      downloaded.
    download: allow downloading the archive into the cache.

  Returns:
    :class:`Centralized` with x float32 ``[N, 32, 32, 3]`` (HWC, RGB) in
    [0, 1] and y int32 ``[N]``.
  """
  batches = {'train': [f'data_batch_{i}' for i in range(1, 6)],
             'test': ['test_batch']}
  return _centralized('cifar10', 'cifar-10-python.tar.gz',
                      'cifar-10-batches-py', CIFAR10_URL, CIFAR10_SHA256,
                      batches, b'labels', 10, data_dir, download)


def cifar100(*, label_mode: str = 'fine', data_dir: str | None = None,
             download: bool = True) -> Centralized:
  """CIFAR-100: 50,000 train and 10,000 test images, 100 (or 20) classes.

  Args:
    label_mode: ``'fine'`` (100 classes) or ``'coarse'`` (20 superclasses).
    data_dir: a folder holding ``cifar-100-python.tar.gz`` or the extracted
      ``cifar-100-python/`` (or being that folder).
    download: allow downloading the archive into the cache.
  """
  if label_mode not in _LABEL_MODES:
    raise ValueError(f"label_mode must be 'fine' or 'coarse', got "
                     f'{label_mode!r}.')
  key, _, num_classes = _LABEL_MODES[label_mode]
  return _centralized('cifar100', 'cifar-100-python.tar.gz',
                      'cifar-100-python', CIFAR100_URL, CIFAR100_SHA256,
                      {'train': ['train'], 'test': ['test']}, key,
                      num_classes, data_dir, download)


def _centralized(subdir, archive_name, folder_name, url, sha256, batches,
                 label_key, num_classes, data_dir, download):
  wanted = [n for names in batches.values() for n in names]
  raw = {}
  folder = None
  if data_dir is not None:
    for candidate in (os.path.join(data_dir, folder_name), data_dir):
      if any(os.path.isfile(os.path.join(candidate, n)) for n in wanted):
        folder = candidate
        break
  if folder is not None:
    for name in wanted:
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise FileNotFoundError(f'CIFAR batch file {path} is missing.')
      with open(path, 'rb') as f:
        raw[name] = load_batch(f, path, label_key, num_classes)
  else:
    try:
      archive = _download.resolve(
          archive_name if data_dir is not None else f'{subdir}/{archive_name}',
          url=url, sha256=sha256, data_dir=data_dir, download=download)
    except FileNotFoundError as e:
      if data_dir is None:
        raise
      raise FileNotFoundError(
          f'{e} The extracted folder {os.path.join(data_dir, folder_name)} '
          'would do as well.') from e
    members = {f'{folder_name}/{n}': n for n in wanted}
    for member, f in _download.iter_archive(archive, list(members)):
      name = members[member]
      raw[name] = load_batch(f, f'{archive}:{member}', label_key, num_classes)

  out = []
  for split in ('train', 'test'):
    sizes = [len(raw[n][1]) for n in batches[split]]
    x = np.empty((sum(sizes),) + IMAGE_SHAPE, np.float32)
    y = np.empty(sum(sizes), np.int32)
    lo = 0
    for name, n in zip(batches[split], sizes):
      data, labels = raw.pop(name)
      chw = data.reshape(n, 3, 32, 32)
      np.divide(chw.transpose(0, 2, 3, 1), np.float32(255), out=x[lo:lo + n])
      y[lo:lo + n] = labels
      lo += n
    out += [x, y]
  return Centralized(*out, num_classes=num_classes)


class _BatchUnpickler(pickle.Unpickler):
  """Builds only plain containers and numpy arrays; refuses anything else."""

  _ARRAY = np.zeros(2, np.uint8)
  _ALLOWED = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('_codecs', 'encode'): __import__('codecs').encode,
  }
  for _module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    _ALLOWED[(_module, '_reconstruct')] = _ARRAY.__reduce__()[0]
  for _module in ('numpy.core.numeric', 'numpy._core.numeric'):
    _ALLOWED[(_module, '_frombuffer')] = _ARRAY.__reduce_ex__(5)[0]
  del _module

  def find_class(self, module, name):
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f'refusing to load {module}.{name}: a CIFAR batch holds only '
          'dicts, lists, bytes, numbers and numpy arrays') from None


def load_batch(f, where: str, label_key: bytes, num_classes: int):
  """Reads one pickled CIFAR batch from the binary file ``f``.

  Returns:
    ``(data, labels)``: uint8 ``[N, 3072]`` (CHW) and int64 ``[N]``.

  Raises:
    ValueError naming ``where`` when the pickle is corrupt, not a CIFAR batch,
    or inconsistent.
  """
  try:
    batch = _BatchUnpickler(f, encoding='bytes').load()
  except Exception as e:  # pylint: disable=broad-except
    # A corrupt pickle raises anything from UnpicklingError to EOFError,
    # IndexError or MemoryError; all mean the same thing here.
    raise ValueError(f'{where}: not a readable CIFAR batch pickle '
                     f'({type(e).__name__}: {e}).') from e
  if not isinstance(batch, dict) or b'data' not in batch or (
      label_key not in batch):
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f'{where}: expected a dict with keys b"data" and '
                     f'{label_key!r}, got {keys}.')
  data = np.asarray(batch[b'data'])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
    raise ValueError(f'{where}: b"data" is {data.dtype} {data.shape}, '
                     f'expected uint8 [N, {_PIXELS}].')
  try:
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{where}: {label_key!r} is not a list of ints.') from e
  if len(labels) != len(data):
    raise ValueError(f'{where}: {len(data)} images but {len(labels)} labels.')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{where}: labels span {labels.min()}..{labels.max()}, '
                     f'outside [0, {num_classes}).')
  return data, labels


def fed_cifar100(*, label_mode: str = 'fine', data_dir: str | None = None,
                 download: bool = True):
  """TensorFlow Federated's federated CIFAR-100 (500 train, 100 test clients).

  Both splits list the union of the two files' client ids, sorted
  numerically, so they have the same clients in the same order; a client
  absent from a split has 0 examples there (400 test clients are empty).
  Note that TFF partitioned train and test *independently*: test client
  ``'7'`` is not train client ``'7'``, so pairing a client's train and test
  data (personalization) is meaningless on this dataset; evaluating a global
  model on the whole test split is what the split is for.

  Args:
    label_mode: ``'fine'``: ``y`` is the fine label (100 classes);
      ``'coarse'``: the superclass (20 classes).
    data_dir: a folder holding ``fed_cifar100_train.h5`` and
      ``fed_cifar100_test.h5``, or ``fed_cifar100.tar.bz2`` (checked and
      extracted beside itself, once); None: the cache folder
      ``<cache>/fed_cifar100/``.
    download: allow downloading the archive into the cache.

  Returns:
    ``(train, test)`` FederatedData with ``x`` float32 ``[n, 32, 32, 3]`` in
    [0, 1] and ``y`` int32 ``[n]``.
  """
  if label_mode not in _LABEL_MODES:
    raise ValueError(f"label_mode must be 'fine' or 'coarse', got "
                     f'{label_mode!r}.')
  paths = _fed_cifar100_paths(data_dir, download)
  return read_tff_image_h5(paths['train'], paths['test'],
                           label_key=_LABEL_MODES[label_mode][1],
                           num_classes=_LABEL_MODES[label_mode][2])


def _fed_cifar100_paths(data_dir, download):
  names = [FED_CIFAR100_FILES['train'], FED_CIFAR100_FILES['test']]
  train, test = _download.archive_files(
      names, archive='fed_cifar100.tar.bz2', url=FED_CIFAR100_URL,
      sha256=FED_CIFAR100_SHA256, cache_subdir='fed_cifar100',
      data_dir=data_dir, download=download)
  return {'train': train, 'test': test}


def _client_order(ids):
  ids = sorted(ids)
  if all(i.isdecimal() for i in ids):
    return sorted(ids, key=int)
  return ids


def read_tff_image_h5(train_path: str, test_path: str, *, label_key: str,
                      num_classes: int, image_key: str = 'image'):
  """Reads a TFF image h5 pair (``examples/<id>/<feature>``) into FederatedData.

  Two passes per file: the first reads only dataset shapes (validating them)
  to size one preallocated array per feature, the second reads each client's
  rows straight into its slice. Clients are the union of both files' ids.
  """
  import h5py  # pylint: disable=g-import-not-at-top

  files = {'train': train_path, 'test': test_path}
  handles = {}
  try:
    for split, path in files.items():
      try:
        handles[split] = h5py.File(path, 'r')
      except OSError as e:
        raise ValueError(f'{path}: not a readable HDF5 file ({e}).') from e
    examples = {}
    for split, h in handles.items():
      group = h.get('examples')
      if not isinstance(group, h5py.Group):
        raise ValueError(f'{files[split]}: no "examples" group (keys: '
                         f'{list(h.keys())}); not a TFF h5 file.')
      examples[split] = group
    ids = _client_order(set(examples['train']) | set(examples['test']))
    result = []
    for split in ('train', 'test'):
      group, path = examples[split], files[split]
      sizes = np.zeros(len(ids), np.int64)
      for k, cid in enumerate(ids):          # pass 1: shapes only
        if cid not in group:
          continue
        client = group[cid]
        for key in (image_key, label_key):
          if key not in client:
            raise ValueError(f'{path}: client {cid!r} has no {key!r} '
                             f'(has {sorted(client.keys())}).')
        image, label = client[image_key], client[label_key]
        if image.dtype != np.uint8 or image.shape[1:] != IMAGE_SHAPE:
          raise ValueError(f'{path}: client {cid!r} {image_key} is '
                           f'{image.dtype} {image.shape}, expected uint8 '
                           f'[n, 32, 32, 3].')
        if label.shape != (image.shape[0],):
          raise ValueError(f'{path}: client {cid!r} has {image.shape[0]} '
                           f'images but {label_key} of shape {label.shape}.')
        sizes[k] = image.shape[0]
      offsets = np.concatenate([[0], np.cumsum(sizes)])
      x = np.empty((offsets[-1],) + IMAGE_SHAPE, np.float32)
      y = np.empty(offsets[-1], np.int32)
      for k, cid in enumerate(ids):          # pass 2: fill the slices
        if not sizes[k]:
          continue
        lo, hi = offsets[k], offsets[k + 1]
        np.divide(group[cid][image_key][()], np.float32(255), out=x[lo:hi])
        labels = group[cid][label_key][()]
        if labels.min() < 0 or labels.max() >= num_classes:
          raise ValueError(f'{path}: client {cid!r} {label_key} spans '
                           f'{labels.min()}..{labels.max()}, outside '
                           f'[0, {num_classes}).')
        y[lo:hi] = labels
      result.append(FederatedData({'x': x, 'y': y}, offsets, np.asarray(ids)))
    return tuple(result)
  finally:
    for h in handles.values():
      h.close()
