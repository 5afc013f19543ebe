"""Tests for fedjax_engine.datasets.cifar: CIFAR-10/100 and federated CIFAR-100.

Small files in the real formats are written into tmp_path: pickled batches
(protocol 2, as the published Python 2 pickles), the tar.gz archives that
hold them, and TFF-layout h5 files with their tar.bz2 archive.
"""

import io
import os
import pickle
import struct
import tarfile
import warnings

import h5py
import numpy as np
import pytest

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import cifar as cifar_lib
from fedjax_engine.datasets import download

CIFAR10_BATCHES = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']


def chw_pattern(n, seed):
  """uint8 [n, 3072]: image k, channel c, row r, column w holds
  (seed + 11k + 100c + 3r + w) mod 256, stored channel plane after plane."""
  k, c, r, w = np.meshgrid(np.arange(n), np.arange(3), np.arange(32),
                           np.arange(32), indexing='ij')
  return ((seed + 11 * k + 100 * c + 3 * r + w) % 256).astype(
      np.uint8).reshape(n, 3072)


def f32(numerator):
  return np.float32(numerator) / np.float32(255)


def batch_bytes(n, seed, **labels):
  batch = {b'batch_label': b'testing batch', b'data': chw_pattern(n, seed),
           b'filenames': [b'img_%d.png' % i for i in range(n)]}
  batch.update({k.encode(): list(v) for k, v in labels.items()})
  return pickle.dumps(batch, protocol=2)


def cifar10_files(n=2):
  """Batch i (1..5) has labels [i, i+1] (mod 10) and seed 10 i; test: 0."""
  files = {}
  for i, name in enumerate(CIFAR10_BATCHES, start=1):
    seed = 10 * i if name != 'test_batch' else 0
    labels = [i % 10, (i + 1) % 10][:n] if name != 'test_batch' else [9, 8][:n]
    files[name] = batch_bytes(n, seed, labels=labels)
  return files


def cifar100_files():
  return {'train': batch_bytes(3, 5, fine_labels=[99, 0, 42],
                               coarse_labels=[19, 4, 7]),
          'test': batch_bytes(1, 6, fine_labels=[17], coarse_labels=[3])}


def write_folder(folder, files):
  os.makedirs(folder, exist_ok=True)
  for name, blob in files.items():
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(blob)
  return folder


def write_tar(path, members, mode='w:gz'):
  """members: name -> bytes, or name -> ('symlink', target)."""
  with tarfile.open(path, mode) as tar:
    for name, blob in members.items():
      info = tarfile.TarInfo(name)
      if isinstance(blob, tuple):
        info.type, info.linkname = tarfile.SYMTYPE, blob[1]
        tar.addfile(info)
      else:
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
  return path


def cifar10_archive(folder, files=None, prefix='cifar-10-batches-py/'):
  files = cifar10_files() if files is None else files
  # Reverse order, with extra members: order comes from names, not the tar.
  members = {prefix + 'readme.html': b'<html></html>',
             prefix + 'batches.meta': pickle.dumps({b'label_names': []})}
  members.update({prefix + n: b for n, b in reversed(list(files.items()))})
  os.makedirs(folder, exist_ok=True)
  return write_tar(os.path.join(folder, 'cifar-10-python.tar.gz'), members)


def check_cifar10(data):
  assert data.num_classes == 10
  assert data.train_x.shape == (10, 32, 32, 3)
  assert data.test_x.shape == (2, 32, 32, 3)
  assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int32
  assert data.train_y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
  assert data.test_y.tolist() == [9, 8]
  # CHW -> HWC: x[k, r, w, c] = (seed + 11k + 100c + 3r + w) % 256 / 255.
  # Train row 0 is data_batch_1 image 0 (seed 10).
  assert data.train_x[0, 0, 0].tolist() == [f32(10), f32(110), f32(210)]
  # Train row 3 is data_batch_2 (seed 20) image 1: 20 + 11 + 200 + 6 + 5.
  assert data.train_x[3, 2, 5, 2] == f32(242)
  # Test image 1, row 31, column 31, green: 11 + 100 + 93 + 31 = 235.
  assert data.test_x[1, 31, 31, 1] == f32(235)
  # Wraps around: test image 0, blue, row 20, column 0: 200 + 60 = 260 -> 4.
  assert data.test_x[0, 20, 0, 2] == f32(4)
  expected = chw_pattern(2, 0).reshape(2, 3, 32, 32).transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(data.test_x, expected.astype(np.float32) / 255)


def test_cifar10_from_archive(tmp_path):
  cifar10_archive(str(tmp_path))
  check_cifar10(cifar_lib.cifar10(data_dir=str(tmp_path)))


def test_cifar10_archive_with_dot_slash_names(tmp_path):
  cifar10_archive(str(tmp_path), prefix='./cifar-10-batches-py/')
  check_cifar10(cifar_lib.cifar10(data_dir=str(tmp_path)))


def test_cifar10_from_extracted_folder(tmp_path):
  folder = write_folder(str(tmp_path / 'cifar-10-batches-py'), cifar10_files())
  check_cifar10(cifar_lib.cifar10(data_dir=str(tmp_path)))
  check_cifar10(cifar_lib.cifar10(data_dir=folder))   # the folder itself


def test_cifar100_fine_and_coarse(tmp_path):
  members = {f'cifar-100-python/{n}': b for n, b in cifar100_files().items()}
  members['cifar-100-python/meta'] = pickle.dumps({b'fine_label_names': []})
  write_tar(str(tmp_path / 'cifar-100-python.tar.gz'), members)
  fine = cifar_lib.cifar100(data_dir=str(tmp_path))
  assert fine.num_classes == 100
  assert fine.train_y.tolist() == [99, 0, 42] and fine.test_y.tolist() == [17]
  assert fine.train_x.shape == (3, 32, 32, 3)
  # Train image 2, red, row 1, column 1: 5 + 22 + 0 + 3 + 1 = 31.
  assert fine.train_x[2, 1, 1, 0] == f32(31)
  coarse = cifar_lib.cifar100(label_mode='coarse', data_dir=str(tmp_path))
  assert coarse.num_classes == 20
  assert coarse.train_y.tolist() == [19, 4, 7] and coarse.test_y.tolist() == [3]
  np.testing.assert_array_equal(coarse.train_x, fine.train_x)
  with pytest.raises(ValueError, match='label_mode'):
    cifar_lib.cifar100(label_mode='medium', data_dir=str(tmp_path))


def test_missing_batch_file_in_folder(tmp_path):
  folder = write_folder(str(tmp_path / 'cifar-10-batches-py'), cifar10_files())
  os.remove(os.path.join(folder, 'data_batch_4'))
  with pytest.raises(FileNotFoundError) as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert os.path.join(folder, 'data_batch_4') in str(e.value)


def test_missing_member_in_archive(tmp_path):
  files = cifar10_files()
  del files['test_batch']
  archive = cifar10_archive(str(tmp_path), files)
  with pytest.raises(ValueError, match='missing member') as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert archive in str(e.value)
  assert 'cifar-10-batches-py/test_batch' in str(e.value)


def test_missing_archive_and_folder(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  message = str(e.value)
  assert str(tmp_path / 'cifar-10-python.tar.gz') in message
  assert str(tmp_path / 'cifar-10-batches-py') in message
  assert cifar_lib.CIFAR10_URL in message


def test_corrupt_pickle_names_the_file(tmp_path):
  files = cifar10_files()
  files['data_batch_2'] = files['data_batch_2'][:500]     # truncated
  folder = write_folder(str(tmp_path / 'cifar-10-batches-py'), files)
  with pytest.raises(ValueError, match='not a readable CIFAR batch') as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert os.path.join(folder, 'data_batch_2') in str(e.value)


def test_corrupt_pickle_in_archive_names_archive_and_member(tmp_path):
  files = cifar10_files()
  files['test_batch'] = b'\x80\x02}q\x00garbage'
  archive = cifar10_archive(str(tmp_path), files)
  with pytest.raises(ValueError, match='not a readable CIFAR batch') as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert f'{archive}:cifar-10-batches-py/test_batch' in str(e.value)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.makedirs, (self.marker,))


def test_pickle_cannot_run_code(tmp_path):
  marker = str(tmp_path / 'pwned')
  files = cifar10_files()
  files['data_batch_1'] = pickle.dumps(
      {b'data': _Evil(marker), b'labels': [0]}, protocol=2)
  write_folder(str(tmp_path / 'cifar-10-batches-py'), files)
  with pytest.raises(ValueError, match='refusing to load') as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert 'data_batch_1' in str(e.value)
  assert not os.path.exists(marker)


def test_pickle_protocol_5_arrays_load(tmp_path):
  files = {n: pickle.loads(b) for n, b in cifar10_files().items()}
  files = {n: pickle.dumps(b, protocol=5) for n, b in files.items()}
  write_folder(str(tmp_path / 'cifar-10-batches-py'), files)
  check_cifar10(cifar_lib.cifar10(data_dir=str(tmp_path)))


def py2_batch_bytes(data, labels):
  """The opcodes a Python 2 cPickle (protocol 2) writes for a CIFAR batch:
  py2 str as SHORT_BINSTRING/BINSTRING, the array through
  numpy.core.multiarray._reconstruct and ndarray.__setstate__."""
  def s(b):
    return b'U' + bytes([len(b)]) + b
  def i(v):
    return b'K' + bytes([v]) if 0 <= v < 256 else b'J' + struct.pack('<i', v)
  n, d = data.shape
  dtype = (b'cnumpy\ndtype\n' + s(b'u1') + i(0) + i(1) + b'\x87R' +
           b'(' + i(3) + s(b'|') + b'NNN' + i(-1) + i(-1) + i(0) + b'tb')
  raw = data.tobytes()
  array = (b'cnumpy.core.multiarray\n_reconstruct\n' + b'cnumpy\nndarray\n' +
           i(0) + b'\x85' + s(b'b') + b'\x87R' + b'(' + i(1) + i(n) + b'M' +
           struct.pack('<H', d) + b'\x86' + dtype + b'\x89' + b'T' +
           struct.pack('<I', len(raw)) + raw + b'tb')
  labels = b''.join(i(v) for v in labels)
  return (b'\x80\x02}(' + s(b'data') + array + s(b'labels') + b'](' + labels +
          b'eu.')


def test_python2_pickle_format(tmp_path):
  files = cifar10_files()
  files['test_batch'] = py2_batch_bytes(chw_pattern(2, 0), [9, 8])
  write_folder(str(tmp_path / 'cifar-10-batches-py'), files)
  with warnings.catch_warnings():
    warnings.simplefilter('error')     # no numpy.core deprecation warning
    check_cifar10(cifar_lib.cifar10(data_dir=str(tmp_path)))


@pytest.mark.parametrize('batch, match', [
    ({b'data': np.zeros((2, 3072), np.uint8)}, "b'labels'"),
    ([1, 2, 3], 'expected a dict'),
    ({b'data': np.zeros((2, 100), np.uint8), b'labels': [0, 1]}, r'\(2, 100\)'),
    ({b'data': np.zeros((2, 3072), np.float32), b'labels': [0, 1]}, 'float32'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0]},
     '2 images but 1 labels'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 10]},
     r'outside \[0, 10\)'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'labels': [-1, 0]},
     r'outside \[0, 10\)'),
])
def test_bad_batch_contents_name_the_file(tmp_path, batch, match):
  files = cifar10_files()
  files['data_batch_3'] = pickle.dumps(batch, protocol=2)
  folder = write_folder(str(tmp_path / 'cifar-10-batches-py'), files)
  with pytest.raises(ValueError, match=match) as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert os.path.join(folder, 'data_batch_3') in str(e.value)


@pytest.mark.parametrize('bad_name', ['../evil', '/tmp/evil',
                                      'cifar-10-batches-py/../../evil'])
def test_unsafe_member_names_refuse_the_archive(tmp_path, bad_name):
  members = {'cifar-10-batches-py/' + n: b for n, b in cifar10_files().items()}
  members = {bad_name: b'x', **members}
  archive = write_tar(str(tmp_path / 'cifar-10-python.tar.gz'), members)
  with pytest.raises(ValueError, match='unsafe member name') as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert archive in str(e.value)
  assert not (tmp_path.parent / 'evil').exists()


def test_symlink_member_is_refused(tmp_path):
  members = {'cifar-10-batches-py/' + n: b for n, b in cifar10_files().items()}
  members['cifar-10-batches-py/test_batch'] = ('symlink', '/etc/passwd')
  write_tar(str(tmp_path / 'cifar-10-python.tar.gz'), members)
  with pytest.raises(ValueError, match='not a regular file'):
    cifar_lib.cifar10(data_dir=str(tmp_path))


def test_corrupt_archive_names_the_file(tmp_path):
  path = tmp_path / 'cifar-10-python.tar.gz'
  path.write_bytes(b'\x1f\x8b\x08\x00' + b'not really gzip' * 10)
  with pytest.raises(ValueError, match='cannot read the archive') as e:
    cifar_lib.cifar10(data_dir=str(tmp_path))
  assert str(path) in str(e.value)






def test_cifar10_download_into_cache(tmp_path, monkeypatch, file_server):
  root, url = file_server
  archive = cifar10_archive(str(root))
  monkeypatch.setattr(cifar_lib, 'CIFAR10_URL', url + 'cifar-10-python.tar.gz')
  monkeypatch.setattr(cifar_lib, 'CIFAR10_SHA256', download.sha256_of(archive))
  cache = tmp_path / 'cache'
  monkeypatch.setenv(download.CACHE_ENV, str(cache))
  check_cifar10(cifar_lib.cifar10())
  assert os.listdir(cache / 'cifar10') == ['cifar-10-python.tar.gz']
  check_cifar10(cifar_lib.cifar10(download=False))    # from the cache now


def test_pinned_constants():
  for value in (cifar_lib.CIFAR10_SHA256, cifar_lib.CIFAR100_SHA256,
                cifar_lib.FED_CIFAR100_SHA256):
    assert len(value) == 64 and int(value, 16) >= 0
  assert cifar_lib.CIFAR10_URL.endswith('/cifar-10-python.tar.gz')
  assert cifar_lib.CIFAR100_URL.endswith('/cifar-100-python.tar.gz')
  assert cifar_lib.FED_CIFAR100_URL.endswith('/fed_cifar100.tar.bz2')


# ---------------------------------------------------------------------------
# Federated CIFAR-100 (TFF h5 layout).

def hwc_images(n, seed):
  """uint8 [n, 32, 32, 3]: (seed + 13k + 2r + w + 50c) mod 256."""
  k, r, w, c = np.meshgrid(np.arange(n), np.arange(32), np.arange(32),
                           np.arange(3), indexing='ij')
  return ((seed + 13 * k + 2 * r + w + 50 * c) % 256).astype(np.uint8)


# client id -> (image seed, fine labels, coarse labels)
TRAIN_CLIENTS = {'0': (0, [5, 6], [1, 2]),
                 '2': (40, [99, 98, 97], [19, 18, 17]),
                 '10': (80, [1], [0]), '1': (120, [3], [3])}
TEST_CLIENTS = {'1': (160, [7, 8], [4, 5]), '3': (200, [9], [6])}


def write_h5(path, clients):
  with h5py.File(path, 'w') as f:
    examples = f.create_group('examples')
    for cid, (seed, fine, coarse) in clients.items():
      g = examples.create_group(cid)
      g['image'] = hwc_images(len(fine), seed)
      g['label'] = np.asarray(fine, np.int64)
      g['coarse_label'] = np.asarray(coarse, np.int64)
  return path


def write_fed_pair(folder, train=TRAIN_CLIENTS, test=TEST_CLIENTS):
  os.makedirs(folder, exist_ok=True)
  return (write_h5(os.path.join(folder, 'fed_cifar100_train.h5'), train),
          write_h5(os.path.join(folder, 'fed_cifar100_test.h5'), test))


def check_fed(train, test, label_mode='fine'):
  for d in (train, test):
    assert isinstance(d, FederatedData)
    # Union of ids, sorted numerically (lexicographic would put '10' third).
    assert d.client_ids.tolist() == ['0', '1', '2', '3', '10']
    assert d.features['x'].dtype == np.float32
    assert d.features['y'].dtype == np.int32
  assert train.sizes.tolist() == [2, 1, 3, 0, 1]
  assert test.sizes.tolist() == [0, 2, 0, 1, 0]
  if label_mode == 'fine':
    assert train.features['y'].tolist() == [5, 6, 3, 99, 98, 97, 1]
    assert test.features['y'].tolist() == [7, 8, 9]
  else:
    assert train.features['y'].tolist() == [1, 2, 3, 19, 18, 17, 0]
    assert test.features['y'].tolist() == [4, 5, 6]
  x = train.client(2)['x']                         # client '2', seed 40
  assert x.shape == (3, 32, 32, 3)
  # Image 1, row 4, column 7, channel 2: 40 + 13 + 8 + 7 + 100 = 168.
  assert x[1, 4, 7, 2] == f32(168)
  assert train.client(1)['x'][0, 0, 0].tolist() == [f32(120), f32(170),
                                                    f32(220)]
  # Test client '3' (seed 200): row 31, column 31, blue: 200+62+31+100 = 393
  # -> 137.
  assert test.client(3)['x'][0, 31, 31, 2] == f32(137)
  np.testing.assert_array_equal(
      test.client(1)['x'], hwc_images(2, 160).astype(np.float32) / 255)
  assert test.client(0)['x'].shape == (0, 32, 32, 3)


def test_fed_cifar100_from_h5(tmp_path):
  write_fed_pair(str(tmp_path))
  check_fed(*cifar_lib.fed_cifar100(data_dir=str(tmp_path)))
  check_fed(*cifar_lib.fed_cifar100(label_mode='coarse',
                                    data_dir=str(tmp_path)), 'coarse')
  with pytest.raises(ValueError, match='label_mode'):
    cifar_lib.fed_cifar100(label_mode='fine_grained', data_dir=str(tmp_path))


def fed_archive(folder, prefix=''):
  src = os.path.join(folder, 'src')
  train, test = write_fed_pair(src)
  members = {}
  for path in (train, test):
    with open(path, 'rb') as f:
      members[prefix + os.path.basename(path)] = f.read()
  members[prefix + 'README'] = b'not wanted'
  return write_tar(os.path.join(folder, 'fed_cifar100.tar.bz2'), members,
                   mode='w:bz2')


@pytest.mark.parametrize('prefix', ['', './', 'fed_cifar100/'])
def test_fed_cifar100_from_archive_extracts_beside_it(tmp_path, monkeypatch,
                                                      prefix):
  data_dir = tmp_path / 'data'
  archive = fed_archive(str(data_dir), prefix)
  monkeypatch.setattr(cifar_lib, 'FED_CIFAR100_SHA256',
                      download.sha256_of(archive))
  before = sorted(os.listdir(data_dir))
  check_fed(*cifar_lib.fed_cifar100(data_dir=str(data_dir)))
  # Only the wanted members, beside the archive, whatever folder they had.
  assert sorted(os.listdir(data_dir)) == sorted(
      before + ['fed_cifar100_test.h5', 'fed_cifar100_train.h5'])
  # The extracted files now serve, even without the archive.
  os.remove(archive)
  check_fed(*cifar_lib.fed_cifar100(data_dir=str(data_dir)))


def test_fed_cifar100_download_into_cache(tmp_path, monkeypatch, file_server):
  root, url = file_server
  archive = fed_archive(str(root))
  monkeypatch.setattr(cifar_lib, 'FED_CIFAR100_URL',
                      url + 'fed_cifar100.tar.bz2')
  cache = tmp_path / 'cache'
  monkeypatch.setenv(download.CACHE_ENV, str(cache))
  # A wrong checksum: refused before anything is extracted.
  monkeypatch.setattr(cifar_lib, 'FED_CIFAR100_SHA256', '0' * 64)
  with pytest.raises(download.DownloadError, match='checksum mismatch'):
    cifar_lib.fed_cifar100()
  assert not os.path.exists(cache / 'fed_cifar100' / 'fed_cifar100_train.h5')
  monkeypatch.setattr(cifar_lib, 'FED_CIFAR100_SHA256', download.sha256_of(archive))
  check_fed(*cifar_lib.fed_cifar100())
  assert sorted(os.listdir(cache / 'fed_cifar100')) == [
      'fed_cifar100.tar.bz2', 'fed_cifar100_test.h5', 'fed_cifar100_train.h5']


def test_fed_cifar100_missing_everything(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    cifar_lib.fed_cifar100(data_dir=str(tmp_path))
  message = str(e.value)
  assert str(tmp_path / 'fed_cifar100.tar.bz2') in message
  assert 'fed_cifar100_train.h5' in message


def test_fed_cifar100_archive_with_duplicate_member(tmp_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'cache'))
  archive = fed_archive(str(tmp_path / 'a'))
  with tarfile.open(archive) as tar:
    members = {m.name: tar.extractfile(m).read() for m in tar}
  members['copy/fed_cifar100_test.h5'] = members['fed_cifar100_test.h5']
  archive = write_tar(str(tmp_path / 'fed_cifar100.tar.bz2'), members,
                      mode='w:bz2')
  monkeypatch.setattr(cifar_lib, 'FED_CIFAR100_SHA256',
                      download.sha256_of(archive))
  with pytest.raises(ValueError, match='appears twice') as e:
    cifar_lib.fed_cifar100(data_dir=str(tmp_path))
  assert archive in str(e.value)


def test_fed_cifar100_archive_missing_member(tmp_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'cache'))
  archive = write_tar(str(tmp_path / 'fed_cifar100.tar.bz2'),
                      {'fed_cifar100_train.h5': b'x'}, mode='w:bz2')
  monkeypatch.setattr(cifar_lib, 'FED_CIFAR100_SHA256',
                      download.sha256_of(archive))
  with pytest.raises(ValueError, match='missing member') as e:
    cifar_lib.fed_cifar100(data_dir=str(tmp_path))
  assert archive in str(e.value) and 'fed_cifar100_test.h5' in str(e.value)


def _mutate(path, fn):
  with h5py.File(path, 'a') as f:
    fn(f)


@pytest.mark.parametrize('mutation, match', [
    (lambda f: f.move('examples', 'snippets'), 'no "examples" group'),
    (lambda f: f['examples/2'].__delitem__('label'),
     "client '2' has no 'label'"),
    (lambda f: (f['examples/2'].__delitem__('image'),
                f['examples/2'].create_dataset(
                    'image', data=np.zeros((3, 32, 32, 3), np.float32))),
     'expected uint8'),
    (lambda f: (f['examples/2'].__delitem__('image'),
                f['examples/2'].create_dataset(
                    'image', data=np.zeros((3, 28, 28), np.uint8))),
     r'\(3, 28, 28\)'),
    (lambda f: (f['examples/2'].__delitem__('label'),
                f['examples/2'].create_dataset('label', data=[1, 2])),
     '3 images but label of shape'),
    (lambda f: (f['examples/10'].__delitem__('label'),
                f['examples/10'].create_dataset('label', data=[100])),
     r'outside \[0, 100\)'),
])
def test_fed_cifar100_bad_h5_names_the_file(tmp_path, mutation, match):
  train, _ = write_fed_pair(str(tmp_path))
  _mutate(train, mutation)
  with pytest.raises(ValueError, match=match) as e:
    cifar_lib.fed_cifar100(data_dir=str(tmp_path))
  assert train in str(e.value)


def test_fed_cifar100_not_h5(tmp_path):
  _, test = write_fed_pair(str(tmp_path))
  with open(test, 'wb') as f:
    f.write(b'this is not hdf5')
  with pytest.raises(ValueError, match='not a readable HDF5 file') as e:
    cifar_lib.fed_cifar100(data_dir=str(tmp_path))
  assert test in str(e.value)


def test_fed_cifar100_coarse_label_range(tmp_path):
  clients = dict(TRAIN_CLIENTS)
  clients['0'] = (0, [5, 6], [1, 20])
  write_fed_pair(str(tmp_path), train=clients)
  cifar_lib.fed_cifar100(data_dir=str(tmp_path))      # fine labels are fine
  with pytest.raises(ValueError, match=r'coarse_label spans 1..20'):
    cifar_lib.fed_cifar100(label_mode='coarse', data_dir=str(tmp_path))
