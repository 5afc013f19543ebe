"""Federated EMNIST: the handwritten characters of EMNIST grouped by writer.

TensorFlow Federated (TFF) published the data as two HDF5 files per variant,
``fed_emnist_train.h5`` / ``fed_emnist_test.h5`` (62 classes, 3,400 writers,
671,585 / 77,483 images) and ``fed_emnist_digitsonly_train.h5`` /
``fed_emnist_digitsonly_test.h5`` (10 classes, 3,383 writers, 341,873 /
40,832 images), each inside one ``.tar.bz2`` archive. Layout of each file:
``examples/<client_id>/pixels`` float32 ``[n, 28, 28]`` in ``[0, 1]`` and
``examples/<client_id>/label`` int32 ``[n]``. Labels 0-9 are the digits,
10-35 the upper-case letters A-Z, 36-61 the lower-case a-z. Every writer has
at least one image in each split (each writer's images are split between
train and test).

Sources (facts only, no code taken):

* archive URLs and pinned sha256: TFF ``tensorflow_federated/python/
  simulation/datasets/emnist/load_data.py`` (github.com/google-parfait/
  tensorflow-federated, commit 040b0d23); later TFF releases moved to
  ``emnist_all.sqlite.lzma`` and FedJAX to its own ``.sqlite`` files, which
  this loader does not read.
* sizes, label convention and "1.0 is the background": the same TFF file's
  ``load_data`` docstring.
* the data: Cohen et al., "EMNIST: an extension of MNIST to handwritten
  letters", IJCNN 2017; grouped by writer by LEAF (Caldas et al., "LEAF: A
  Benchmark for Federated Settings", arXiv:1812.01097); used as a benchmark
  in Reddi et al., "Adaptive Federated Optimization", ICLR 2021.

Pixel convention. TFF stores 1.0 for the white background and 0.0 for the
ink, the inverse of MNIST. By default this loader keeps TFF's values
(``invert=False``), as Reddi et al.'s classification pipeline does
(google-research/federated ``utils/datasets/emnist_dataset.py`` feeds
``pixels`` unchanged to the classifier). ``invert=True`` returns ``1 - x``
(0.0 background), as FedJAX's ``fedjax/datasets/emnist.py`` does
(``'x': 1 - examples['pixels']``); the inversion happens in place.

Files: :func:`fedjax_engine.datasets.download.archive_files` looks for the
two ``.h5`` files in ``data_dir``, else in the cache folder
``<cache>/emnist/``. When they are missing it takes the archive from the
same folder (or, for the cache, downloads it there), checks it against
TFF's pinned sha256 and extracts the two files beside it, all or nothing;
no member name ever becomes a path. The archive is kept.

Example (a tiny file in TFF's layout):

  >>> import os, tempfile, h5py, numpy as np
  >>> folder = tempfile.mkdtemp()
  >>> for split, n in (('train', 3), ('test', 1)):
  ...   with h5py.File(os.path.join(folder, f'fed_emnist_{split}.h5'), 'w') as f:
  ...     f['examples/f0001_01/pixels'] = np.ones((n, 28, 28), np.float32)
  ...     f['examples/f0001_01/label'] = np.arange(n, dtype=np.int32)
  >>> train, test = emnist(data_dir=folder)
  >>> train.features['x'].shape, train.features['y'].tolist(), test.num_examples
  ((3, 28, 28), [0, 1, 2], 1)
  >>> float(emnist(data_dir=folder, invert=True)[0].features['x'].max())
  0.0
"""

import os

import numpy as np

from fedjax_engine import data as data_lib
from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import download

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 62
NUM_CLASSES_DIGITS = 10

_URL_ROOT = 'https://storage.googleapis.com/tff-datasets-public/'

# only_digits -> (file prefix, archive URL, pinned sha256 of the archive), as
# published in TFF's emnist/load_data.py (see the module docstring).
ARCHIVES = {
    False: ('fed_emnist', _URL_ROOT + 'fed_emnist.tar.bz2',
            'fe1ed5a502cea3a952eb105920bff8cffb32836b5173cb18a57a32c3606f3ea0'),
    True: ('fed_emnist_digitsonly',
           _URL_ROOT + 'fed_emnist_digitsonly.tar.bz2',
           '55333deb8546765427c385710ca5e7301e16f4ed8b60c1dc5ae224b42bd5b14b'),
}

_H5_ERRORS = (OSError, KeyError, RuntimeError, TypeError)


def emnist(*, only_digits: bool = False, invert: bool = False,
           data_dir: str | None = None, download: bool = True):
  """Loads federated EMNIST (62 classes) or its digits-only variant (10).

  Args:
    only_digits: the digits-only files (labels 0-9) instead of all 62 classes.
    invert: return ``1 - pixels`` (0.0 background, as FedJAX) instead of
      TFF's values (1.0 background, the default).
    data_dir: a folder holding the two ``.h5`` files, or the archive
      (checked and extracted beside itself); nothing is downloaded.
    download: when ``data_dir`` is None, allow downloading the archive into
      the cache.

  Returns:
    ``(train, test)`` FederatedData with features ``x`` float32
    ``[n, 28, 28]`` and ``y`` int32 ``[n]``; the same clients, in the same
    order (client ids sorted as strings), in both. A client present in only
    one file has 0 examples in the other.

  Raises:
    FileNotFoundError: a file is missing (the message names it).
    ValueError: a file is truncated or corrupt, or a client is empty, has
      images of another shape, labels outside ``[0, num_classes)`` or pixels
      outside ``[0, 1]`` (the message names the file and the client).
  """
  train_path, test_path = _h5_paths(only_digits, data_dir, download)
  num_classes = NUM_CLASSES_DIGITS if only_digits else NUM_CLASSES
  return load_h5_pair(train_path, test_path, num_classes=num_classes,
                      invert=invert)


def _h5_paths(only_digits, data_dir, allow_download):
  prefix, url, sha256 = ARCHIVES[bool(only_digits)]
  return download.archive_files(
      (prefix + '_train.h5', prefix + '_test.h5'),
      archive=url.rsplit('/', 1)[-1], url=url, sha256=sha256,
      cache_subdir='emnist', data_dir=data_dir, download=allow_download)


def load_h5_pair(train_path: str, test_path: str, *, num_classes: int,
                 invert: bool = False):
  """Reads a train/test pair of files in TFF's federated EMNIST layout.

  Client ids are the union of both files' clients, sorted as strings. Each
  split is read in two passes: the first reads only the datasets' shapes and
  dtypes (and checks them), the second reads every client's arrays straight
  into one preallocated array per feature, so peak memory is the final
  arrays plus HDF5's small chunk buffers.
  """
  with _open(train_path) as train_file, _open(test_path) as test_file:
    groups = [_examples(train_file, train_path), _examples(test_file,
                                                           test_path)]
    with _h5_errors(train_path):
      train_ids = set(groups[0].keys())
    with _h5_errors(test_path):
      test_ids = set(groups[1].keys())
    ids = sorted(train_ids | test_ids)
    if not ids:
      raise ValueError(f'{train_path} and {test_path} hold no clients.')
    splits = []
    for group, path in zip(groups, (train_path, test_path)):
      splits.append(_read_split(group, path, ids, num_classes))
  if invert:
    for data in splits:
      np.subtract(np.float32(1), data.features['x'], out=data.features['x'])
  return tuple(splits)


class _h5_errors:
  """Re-raises h5py's errors as a ValueError naming the file."""

  def __init__(self, path, what='a readable HDF5 file'):
    self.path, self.what = path, what

  def __enter__(self):
    return self

  def __exit__(self, kind, value, tb):
    if kind is not None and issubclass(kind, _H5_ERRORS):
      raise ValueError(f'{self.path} is not {self.what} (truncated or '
                       f'corrupt?): {kind.__name__}: {value}') from value
    return False


def _open(path):
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist.')
  # h5py is imported where it is used: it adds 11 MB to every process that
  # imports the engine.
  import h5py  # pylint: disable=g-import-not-at-top
  with _h5_errors(path):
    return h5py.File(path, 'r')


def _examples(f, path):
  import h5py  # pylint: disable=g-import-not-at-top
  with _h5_errors(path):
    group = f.get('examples')
    if not isinstance(group, h5py.Group):
      raise ValueError(f'{path} has no "examples" group; expected TFF\'s '
                       'layout examples/<client_id>/{pixels,label}.')
    return group


def _read_split(group, path, ids, num_classes):
  import h5py  # pylint: disable=g-import-not-at-top
  sizes = np.zeros(len(ids), np.int64)
  with _h5_errors(path):
    present = set(group.keys())
    for k, cid in enumerate(ids):       # pass 1: shapes only, no data read
      if cid not in present:
        continue
      client = group[cid]
      if not isinstance(client, h5py.Group):
        raise ValueError(f'{path}: examples/{cid} is not a group.')
      pixels, label = client.get('pixels'), client.get('label')
      if not isinstance(pixels, h5py.Dataset) or not isinstance(
          label, h5py.Dataset):
        raise ValueError(f'{path}: client {cid!r} lacks a "pixels" or "label" '
                         'dataset.')
      n = label.shape[0] if label.ndim == 1 else -1
      if n < 0 or pixels.shape != (n,) + IMAGE_SHAPE:
        raise ValueError(
            f'{path}: client {cid!r} has pixels of shape {pixels.shape} and '
            f'labels of shape {label.shape}; expected [n, 28, 28] and [n].')
      if n == 0:
        raise ValueError(f'{path}: client {cid!r} has 0 examples; every '
                         'client of federated EMNIST has at least one.')
      if pixels.dtype.kind != 'f' or label.dtype.kind not in 'iu':
        raise ValueError(f'{path}: client {cid!r} has pixels of dtype '
                         f'{pixels.dtype} and labels of dtype {label.dtype}; '
                         'expected float pixels and integer labels.')
      sizes[k] = n
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    # Aligned, so that CPU devices use the store in place (no copy each).
    x = data_lib.aligned_empty((int(offsets[-1]),) + IMAGE_SHAPE, np.float32)
    y = data_lib.aligned_empty(int(offsets[-1]), np.int32)
    # Pass 2: fill the slices in place. Each dataset is opened, read and
    # closed in turn (an open dataset keeps its own chunk cache, up to 1 MiB,
    # which would otherwise hold a second copy of the data until the end).
    for k, cid in enumerate(ids):
      if sizes[k] == 0:
        continue
      lo, hi = int(offsets[k]), int(offsets[k + 1])
      client = group[cid]
      client['pixels'].read_direct(x, dest_sel=np.s_[lo:hi])
      client['label'].read_direct(y, dest_sel=np.s_[lo:hi])
  _check_values(path, x, y, offsets, ids, num_classes)
  return FederatedData({'x': x, 'y': y}, offsets, np.asarray(ids))


def _check_values(path, x, y, offsets, ids, num_classes):
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    row = int(np.argmax((y < 0) | (y >= num_classes)))
    cid = ids[int(np.searchsorted(offsets, row, side='right')) - 1]
    raise ValueError(f'{path}: client {cid!r} has label {int(y[row])}, outside '
                     f'[0, {num_classes}).')
  # NaN fails both comparisons, so it is caught here too.
  if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):
    flat = x.reshape(len(x), -1)
    bad = ~((flat >= 0.0) & (flat <= 1.0))
    row = int(np.argmax(bad.any(axis=1)))
    cid = ids[int(np.searchsorted(offsets, row, side='right')) - 1]
    raise ValueError(f'{path}: client {cid!r} has pixel values outside '
                     '[0, 1] (or NaN).')
