"""Federated EMNIST loader: TFF's h5 layout, bad files, real data, download."""

import importlib
import hashlib
import io
import os
import pathlib
import tarfile

import h5py
import numpy as np
import pytest

from fedjax_engine.datasets import download
emnist_lib = importlib.import_module('fedjax_engine.datasets.emnist')
from fedjax_engine.datasets.emnist import emnist

REAL = pathlib.Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / (
    'femnist')


def write_h5(path, clients):
  """``clients``: {client_id: (pixels, labels)} in TFF's layout."""
  with h5py.File(path, 'w') as f:
    for cid, (pixels, labels) in clients.items():
      f.create_dataset(f'examples/{cid}/pixels', data=pixels,
                       compression='gzip')
      f.create_dataset(f'examples/{cid}/label', data=labels)


def images(*values):
  """One 28x28 image per value, filled with it, pixel [0, 0] set to 0."""
  out = np.empty((len(values), 28, 28), np.float32)
  for i, v in enumerate(values):
    out[i] = v
    out[i, 0, 0] = 0.0
  return out


def labels(*values):
  return np.array(values, np.int32)


@pytest.fixture
def folder(tmp_path):
  """Train: b has 2 images, a has 1. Test: a has 1, c has 1."""
  write_h5(tmp_path / 'fed_emnist_train.h5', {
      'b': (images(0.25, 0.5), labels(61, 0)),
      'a': (images(1.0), labels(10))})
  write_h5(tmp_path / 'fed_emnist_test.h5', {
      'c': (images(0.75), labels(36)),
      'a': (images(0.125), labels(9))})
  return tmp_path


def test_loads_tff_layout(folder):
  train, test = emnist(data_dir=str(folder))
  assert train.client_ids.tolist() == ['a', 'b', 'c']
  assert test.client_ids.tolist() == ['a', 'b', 'c']
  assert train.sizes.tolist() == [1, 2, 0]
  assert test.sizes.tolist() == [1, 0, 1]
  x, y = train.features['x'], train.features['y']
  assert x.dtype == np.float32 and x.shape == (3, 28, 28)
  assert y.dtype == np.int32 and y.tolist() == [10, 61, 0]
  assert x[:, 5, 7].tolist() == [1.0, 0.25, 0.5]
  assert x[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
  assert x.flags['C_CONTIGUOUS']
  assert test.features['y'].tolist() == [9, 36]
  assert test.features['x'][:, 3, 3].tolist() == [0.125, 0.75]


def test_invert(folder):
  train, test = emnist(data_dir=str(folder), invert=True)
  assert train.features['x'][:, 5, 7].tolist() == [0.0, 0.75, 0.5]
  assert train.features['x'][:, 0, 0].tolist() == [1.0, 1.0, 1.0]
  assert test.features['x'][:, 3, 3].tolist() == [0.875, 0.25]


def test_only_digits_reads_digits_files_and_range(tmp_path):
  write_h5(tmp_path / 'fed_emnist_digitsonly_train.h5',
           {'w': (images(0.5, 0.5), labels(0, 9))})
  write_h5(tmp_path / 'fed_emnist_digitsonly_test.h5',
           {'w': (images(0.5), labels(10))})
  with pytest.raises(ValueError, match=r"fed_emnist_digitsonly_test\.h5: "
                     r"client 'w' has label 10, outside \[0, 10\)"):
    emnist(only_digits=True, data_dir=str(tmp_path))
  write_h5(tmp_path / 'fed_emnist_digitsonly_test.h5',
           {'w': (images(0.5), labels(3))})
  train, test = emnist(only_digits=True, data_dir=str(tmp_path))
  assert train.features['y'].tolist() == [0, 9]
  assert test.features['y'].tolist() == [3]


@pytest.mark.parametrize('bad_label', [62, -1])
def test_label_out_of_range(folder, bad_label):
  write_h5(folder / 'fed_emnist_test.h5', {
      'a': (images(0.5), labels(1)),
      'z': (images(0.5, 0.5), labels(3, bad_label))})
  with pytest.raises(ValueError, match=r"fed_emnist_test\.h5: client 'z' has "
                     rf"label {bad_label}, outside \[0, 62\)"):
    emnist(data_dir=str(folder))


def test_wrong_pixel_shape(folder):
  write_h5(folder / 'fed_emnist_train.h5',
           {'a': (np.ones((2, 28, 27), np.float32), labels(1, 2))})
  with pytest.raises(ValueError, match=r"fed_emnist_train\.h5: client 'a' has "
                     r'pixels of shape \(2, 28, 27\)'):
    emnist(data_dir=str(folder))


def test_pixels_and_labels_disagree(folder):
  write_h5(folder / 'fed_emnist_train.h5',
           {'a': (images(0.5, 0.5), labels(1, 2, 3))})
  with pytest.raises(ValueError, match=r"fed_emnist_train\.h5: client 'a'"):
    emnist(data_dir=str(folder))


def test_empty_client(folder):
  write_h5(folder / 'fed_emnist_test.h5', {
      'a': (images(0.5), labels(1)),
      'e': (np.zeros((0, 28, 28), np.float32), labels())})
  with pytest.raises(ValueError, match=r"fed_emnist_test\.h5: client 'e' has 0 "
                     'examples'):
    emnist(data_dir=str(folder))


@pytest.mark.parametrize('value', [1.5, -0.25, np.nan])
def test_pixel_values_out_of_range(folder, value):
  write_h5(folder / 'fed_emnist_train.h5', {
      'a': (images(0.5), labels(1)), 'b': (images(0.5, value), labels(1, 2))})
  with pytest.raises(ValueError, match=r"fed_emnist_train\.h5: client 'b' has "
                     r'pixel values outside \[0, 1\]'):
    emnist(data_dir=str(folder))


def test_non_integer_labels(folder):
  write_h5(folder / 'fed_emnist_train.h5',
           {'a': (images(0.5), np.array([1.0], np.float32))})
  with pytest.raises(ValueError, match=r"fed_emnist_train\.h5: client 'a' has "
                     'pixels of dtype float32 and labels of dtype float32'):
    emnist(data_dir=str(folder))


def test_missing_dataset_and_group(folder):
  with h5py.File(folder / 'fed_emnist_train.h5', 'w') as f:
    f['examples/a/pixels'] = images(0.5)
  with pytest.raises(ValueError, match=r"fed_emnist_train\.h5: client 'a' "
                     'lacks a "pixels" or "label" dataset'):
    emnist(data_dir=str(folder))
  with h5py.File(folder / 'fed_emnist_train.h5', 'w') as f:
    f['clients/a/pixels'] = images(0.5)
  with pytest.raises(ValueError, match=r'fed_emnist_train\.h5 has no '
                     '"examples" group'):
    emnist(data_dir=str(folder))


@pytest.mark.parametrize('keep', [0.3, 0.6, 0.9, 0.99])
def test_truncated_file(folder, keep):
  path = folder / 'fed_emnist_train.h5'
  many = {f'c{k:02d}': (images(*np.linspace(0, 1, 30)), labels(*range(30)))
          for k in range(8)}
  write_h5(path, many)
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(ValueError, match=r'fed_emnist_train\.h5 is not a readable '
                     r'HDF5 file \(truncated or corrupt\?\)'):
    emnist(data_dir=str(folder))


def test_not_an_h5_file(folder):
  (folder / 'fed_emnist_test.h5').write_bytes(b'not hdf5 at all' * 10)
  with pytest.raises(ValueError, match=r'fed_emnist_test\.h5 is not a readable '
                     'HDF5 file'):
    emnist(data_dir=str(folder))


def test_missing_test_split(folder):
  os.remove(folder / 'fed_emnist_test.h5')
  with pytest.raises(FileNotFoundError, match=r'fed_emnist_test\.h5 is not in '
                     r'data_dir .*fed_emnist\.tar\.bz2'):
    emnist(data_dir=str(folder))


# ---------------------------------------------------------------------------
# The real FEMNIST subset (../shared/data/femnist).


def test_real_femnist_subset():
  train_path = REAL / 'fed_emnist_train.h5'
  if not train_path.is_file() or not (REAL / 'fed_emnist_test.h5').is_file():
    pytest.skip(f'real FEMNIST subset not found: {train_path}')
  train, test = emnist(data_dir=str(REAL))
  assert train.num_clients == test.num_clients == 300
  assert train.num_examples == 41456 and test.num_examples == 4759
  assert (train.client_ids == test.client_ids).all()
  assert train.client_ids[:3].tolist() == ['f0424_27', 'f1255_13', 'f1501_00']
  assert train.sizes.min() >= 1 and test.sizes.min() >= 1
  for data in (train, test):
    x, y = data.features['x'], data.features['y']
    assert x.shape[1:] == (28, 28) and x.dtype == np.float32
    assert y.dtype == np.int32 and 0 <= y.min() and y.max() < 62
    assert 0.0 <= x.min() and x.max() <= 1.0
  assert len(np.unique(train.features['y'])) == 62
  # The first writer's first images, as stored (1.0 = white background).
  assert train.features['y'][:5].tolist() == [47, 47, 28, 10, 24]
  assert test.features['y'][:5].tolist() == [40, 14, 28, 18, 28]
  np.testing.assert_allclose(train.features['x'][0, 14, 10:13],
                             [0.99215686, 1.0, 0.9607843], rtol=1e-6)
  assert train.features['x'].mean() > 0.9


# ---------------------------------------------------------------------------
# Download into the cache from a local HTTP server.



def make_archive(path, members):
  """A tar.bz2 of ``{member name: bytes}``; returns its sha256."""
  with tarfile.open(path, 'w:bz2') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return hashlib.sha256(path.read_bytes()).hexdigest()


def h5_bytes(tmp_path, name, clients):
  path = tmp_path / name
  write_h5(path, clients)
  return path.read_bytes()


@pytest.fixture
def published(tmp_path, file_server, monkeypatch):
  """A small fed_emnist.tar.bz2 served locally; the cache in tmp_path."""
  root, url = file_server
  members = {
      './fed_emnist_train.h5': h5_bytes(tmp_path, 'tr.h5', {
          'w2': (images(0.5), labels(5)), 'w1': (images(0.25), labels(35))}),
      './fed_emnist_test.h5': h5_bytes(tmp_path, 'te.h5', {
          'w1': (images(1.0), labels(61))}),
      'README': b'ignored'}
  sha = make_archive(root / 'fed_emnist.tar.bz2', members)
  cache = tmp_path / 'cache'
  monkeypatch.setenv(download.CACHE_ENV, str(cache))
  monkeypatch.setitem(emnist_lib.ARCHIVES, False,
                      ('fed_emnist', url + 'fed_emnist.tar.bz2', sha))
  return root, url, cache, sha


def test_download_checksum_mismatch(published, monkeypatch):
  _, url, cache, _ = published
  monkeypatch.setitem(emnist_lib.ARCHIVES, False,
                      ('fed_emnist', url + 'fed_emnist.tar.bz2', '0' * 64))
  with pytest.raises(download.DownloadError, match='checksum mismatch'):
    emnist()
  assert not [p for p in cache.rglob('*') if p.is_file()]


def test_download_and_extract(published):
  root, _, cache, _ = published
  train, test = emnist()
  assert sorted(os.listdir(cache / 'emnist')) == ['fed_emnist.tar.bz2',
                                                  'fed_emnist_test.h5',
                                                  'fed_emnist_train.h5']
  assert train.client_ids.tolist() == ['w1', 'w2']
  assert train.features['y'].tolist() == [35, 5]
  assert test.sizes.tolist() == [1, 0]
  assert test.features['x'][0, 9, 9] == 1.0
  # Served no more: the second load reads the extracted cache.
  os.remove(root / 'fed_emnist.tar.bz2')
  train2, _ = emnist(download=False)
  assert train2.features['y'].tolist() == [35, 5]


def test_no_download_when_off(published):
  _, _, cache, _ = published
  with pytest.raises(FileNotFoundError, match=r'fed_emnist_train\.h5 is not '
                     r'in the cache .*, nor is fed_emnist_test\.h5, .*'
                     'downloading is off'):
    emnist(download=False)
  assert not (cache / 'emnist' / 'fed_emnist.tar.bz2').exists()


def test_archive_without_test_member(tmp_path, file_server, monkeypatch):
  root, url = file_server
  sha = make_archive(root / 'fed_emnist.tar.bz2', {
      'fed_emnist_train.h5': h5_bytes(tmp_path, 'tr.h5', {
          'w': (images(0.5), labels(1))})})
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.setitem(emnist_lib.ARCHIVES, False,
                      ('fed_emnist', url + 'fed_emnist.tar.bz2', sha))
  with pytest.raises(ValueError, match=r'fed_emnist\.tar\.bz2: missing '
                     r'member\(s\) fed_emnist_test\.h5'):
    emnist()
  # All or nothing: the train file was not kept either.
  assert not (tmp_path / 'cache' / 'emnist' / 'fed_emnist_train.h5').exists()


def test_archive_in_data_dir_is_extracted_beside_it(tmp_path, monkeypatch):
  sha = make_archive(tmp_path / 'fed_emnist.tar.bz2', {
      'fed_emnist_train.h5': h5_bytes(tmp_path, 'tr.h5', {
          'w': (images(0.5), labels(1))}),
      'fed_emnist_test.h5': h5_bytes(tmp_path, 'te.h5', {
          'w': (images(0.5), labels(2))})})
  url = 'https://example.invalid/fed_emnist.tar.bz2'   # never fetched
  monkeypatch.setitem(emnist_lib.ARCHIVES, False, ('fed_emnist', url, sha))
  train, test = emnist(data_dir=str(tmp_path))
  assert train.features['y'].tolist() == [1] and test.num_examples == 1
  assert (tmp_path / 'fed_emnist_test.h5').exists()
