"""Tests for fedjax_engine.datasets.shakespeare (TFF federated Shakespeare).

Expected ids are written out from the documented vocabulary (FedJAX's ids:
PAD 0, BOS 1, EOS 2, VOCAB[i] -> 3 + i, OOV 89), never computed by the
module's encoder.
"""

import importlib
import hashlib
import io
import os
import pathlib
import tarfile

import h5py
import numpy as np
import pytest

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import download
sh = importlib.import_module('fedjax_engine.datasets.shakespeare')

# ../shared/data relative to the repository root.
REAL = (pathlib.Path(__file__).resolve().parents[1].parent / 'shared' /
        'data' / 'shakespeare')

# Ids of characters used below (from the published character list).
T, o, SP, b, e, COMMA, r, n, t = 14, 26, 16, 44, 67, 19, 48, 47, 7
H, i, DOT, Y = 11, 68, 61, 79
A, B, C, D, E = 73, 51, 29, 10, 74
# TFF's CHAR_VOCAB / the byte string of fedjax's _build_look_up_table.
CHARS = ('dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26:'
         '\naeimquyAEIMQUY]!%)-159\r')
IDS = {ord(c): 3 + k for k, c in enumerate(CHARS)}


def write_h5(path, clients, *, vlen=False):
  """``{client_id: [snippet bytes, ...]}`` in TFF's layout."""
  with h5py.File(path, 'w') as f:
    for cid, snippets in clients.items():
      if vlen:
        f.create_dataset(f'examples/{cid}/snippets', data=np.array(
            snippets, dtype=object), dtype=h5py.string_dtype('ascii'))
      else:
        f[f'examples/{cid}/snippets'] = np.array(snippets, dtype=bytes)


def write_splits(folder, train, test, **kw):
  write_h5(os.path.join(folder, 'shakespeare_train.h5'), train, **kw)
  write_h5(os.path.join(folder, 'shakespeare_test.h5'), test, **kw)
  return str(folder)


def test_vocabulary_matches_tff_and_fedjax():
  assert ''.join(sh.VOCAB) == CHARS and len(sh.VOCAB) == 86
  assert (sh.PAD, sh.BOS, sh.EOS, sh.OOV) == (0, 1, 2, 89)
  assert sh.vocab_size == sh.VOCAB_SIZE == 90
  assert sh.TABLE[ord('d')] == 3 and sh.TABLE[ord('\r')] == 88
  assert sh.TABLE[ord('~')] == 89 and sh.TABLE[ord('}')] == 89
  assert sh.TABLE[0] == 89 and sh.TABLE[200] == 89


def test_encode_hand_written_ids():
  assert sh.encode('To be, or not').tolist() == [
      T, o, SP, b, e, COMMA, SP, o, r, SP, n, o, t]
  assert sh.encode(b'To be').tolist() == [T, o, SP, b, e]
  assert sh.encode('\n\r"9').tolist() == [65, 88, 58, 87]
  # Non-vocabulary characters, one OOV per character of a str.
  assert sh.encode('a\u00e9~}b').tolist() == [66, 89, 89, 89, 44]
  assert sh.encode('').tolist() == []
  assert sh.encode('To').dtype == np.int32


def test_encode_batch_pads_with_pad():
  got = sh.encode(['Hi.', 'Yo', ''])
  assert got.dtype == np.int32
  assert got.tolist() == [[H, i, DOT], [Y, o, 0], [0, 0, 0]]
  assert sh.encode(np.array([b'Hi', b'o'])).tolist() == [[H, i], [o, 0]]
  assert sh.encode(np.array(['ab', 'c'], dtype=object)).tolist() == [
      [66, 44], [23, 0]]
  assert sh.encode([]).shape == (0, 0)
  with pytest.raises(TypeError):
    sh.encode([1, 2])


def test_snippet_chunking_boundaries(tmp_path):
  # L = 4: chunks of 5 tokens. 'Hi.' -> 5 tokens (one full chunk);
  # 'Hi.o' -> 6 tokens (two chunks, the second padded); '' -> BOS, EOS.
  folder = write_splits(tmp_path, {'ROMEO': [b'Hi.', b'Hi.o', b'']},
                        {'ROMEO': [b'Yo']})
  train, test = sh.shakespeare(sequence_length=4, data_dir=folder)
  assert train.features['x'].tolist() == [
      [1, H, i, DOT],
      [1, H, i, DOT], [2, 0, 0, 0],
      [1, 2, 0, 0]]
  assert train.features['y'].tolist() == [
      [H, i, DOT, 2],
      [H, i, DOT, o], [0, 0, 0, 0],
      [2, 0, 0, 0]]
  assert test.features['x'].tolist() == [[1, Y, o, 2]]
  assert test.features['y'].tolist() == [[Y, o, 2, 0]]
  for d in (train, test):
    assert d.features['x'].dtype == np.int32
    assert d.features['x'].flags.c_contiguous
    assert d.features['y'].flags.c_contiguous


def test_long_snippet_and_oov(tmp_path):
  # 'To be, or~' is 10 chars + BOS + EOS = 12 tokens -> 3 chunks of L+1 = 5.
  folder = write_splits(tmp_path, {'X': [b'To be, or~']}, {'X': [b'T']})
  train, _ = sh.shakespeare(sequence_length=4, data_dir=folder)
  assert train.features['x'].tolist() == [
      [1, T, o, SP], [e, COMMA, SP, o], [89, 2, 0, 0]]
  assert train.features['y'].tolist() == [
      [T, o, SP, b], [COMMA, SP, o, r], [2, 0, 0, 0]]


def test_client_packing_matches_fedjax_docstring(tmp_path):
  # fedjax preprocess_client, sequence_length=3, [b'ABCD', b'E'].
  folder = write_splits(tmp_path, {'c': [b'ABCD', b'E']}, {'c': [b'A']})
  train, test = sh.shakespeare(sequence_length=3, packing='client',
                               data_dir=folder)
  assert train.features['x'].tolist() == [[1, A, B], [C, D, 2], [1, E, 0]]
  assert train.features['y'].tolist() == [[A, B, C], [D, 2, 1], [E, 2, 0]]
  assert test.features['x'].tolist() == [[1, A, 0]]
  assert test.features['y'].tolist() == [[A, 2, 0]]


def test_same_clients_sorted_and_absent_ones_empty(tmp_path):
  folder = write_splits(tmp_path, {'b_ROLE': [b'Hi'], 'a_ROLE': [b'Yo', b'o']},
                        {'c_ROLE': [b'T'], 'a_ROLE': [b'To']})
  train, test = sh.shakespeare(sequence_length=8, data_dir=folder)
  for d in (train, test):
    assert isinstance(d, FederatedData)
    assert d.client_ids.tolist() == ['a_ROLE', 'b_ROLE', 'c_ROLE']
  assert train.sizes.tolist() == [2, 1, 0]
  assert test.sizes.tolist() == [1, 0, 1]
  assert train.client(1)['x'].tolist() == [[1, H, i, 2, 0, 0, 0, 0]]


def test_variable_length_strings_read_the_same(tmp_path):
  clients = {'A': [b'To be, or not', b'', b'Hi.'], 'B': [b'~Yo']}
  (tmp_path / 'fixed').mkdir()
  (tmp_path / 'vlen').mkdir()
  fixed, _ = sh.shakespeare(sequence_length=5, data_dir=write_splits(
      tmp_path / 'fixed', clients, clients))
  vlen, _ = sh.shakespeare(sequence_length=5, data_dir=write_splits(
      tmp_path / 'vlen', clients, clients, vlen=True))
  with h5py.File(tmp_path / 'vlen' / 'shakespeare_train.h5', 'r') as f:
    assert f['examples/A/snippets'].dtype.kind == 'O'
  np.testing.assert_array_equal(fixed.offsets, vlen.offsets)
  np.testing.assert_array_equal(fixed.features['x'], vlen.features['x'])
  np.testing.assert_array_equal(fixed.features['y'], vlen.features['y'])


# --- bad input ---------------------------------------------------------------


def test_truncated_h5_names_the_file(tmp_path):
  folder = write_splits(tmp_path, {'A': [b'Hi'] * 50}, {'A': [b'Yo']})
  path = os.path.join(folder, 'shakespeare_train.h5')
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match='shakespeare_train.h5'):
    sh.shakespeare(data_dir=folder)


def test_not_hdf5_names_the_file(tmp_path):
  write_splits(tmp_path, {'A': [b'Hi']}, {'A': [b'Yo']})
  (tmp_path / 'shakespeare_test.h5').write_bytes(b'not an h5 file')
  with pytest.raises(ValueError, match=r'shakespeare_test\.h5.*HDF5'):
    sh.shakespeare(data_dir=str(tmp_path))


def test_missing_snippets_names_file_and_client(tmp_path):
  folder = write_splits(tmp_path, {'A': [b'Hi']}, {'A': [b'Yo']})
  with h5py.File(os.path.join(folder, 'shakespeare_test.h5'), 'a') as f:
    f['examples/B/lines'] = np.array([b'x'])
  with pytest.raises(ValueError,
                     match=r"shakespeare_test\.h5.*'B'.*'snippets'"):
    sh.shakespeare(data_dir=folder)


def test_missing_examples_group(tmp_path):
  folder = write_splits(tmp_path, {'A': [b'Hi']}, {'A': [b'Yo']})
  with h5py.File(os.path.join(folder, 'shakespeare_train.h5'), 'w') as f:
    f['clients/A/snippets'] = np.array([b'Hi'])
  with pytest.raises(ValueError, match=r'shakespeare_train\.h5.*examples'):
    sh.shakespeare(data_dir=folder)


def test_non_string_snippets(tmp_path):
  folder = write_splits(tmp_path, {'A': [b'Hi']}, {'A': [b'Yo']})
  with h5py.File(os.path.join(folder, 'shakespeare_train.h5'), 'w') as f:
    f['examples/A/snippets'] = np.arange(3)
  with pytest.raises(ValueError, match=r'shakespeare_train\.h5.*strings'):
    sh.shakespeare(data_dir=folder)


def test_missing_test_file_names_it(tmp_path):
  write_h5(tmp_path / 'shakespeare_train.h5', {'A': [b'Hi']})
  with pytest.raises(FileNotFoundError,
                     match=r'shakespeare_test\.h5.*shakespeare\.tar\.bz2'):
    sh.shakespeare(data_dir=str(tmp_path))


def test_no_cache_and_no_download(tmp_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'cache'))
  with pytest.raises(FileNotFoundError, match='shakespeare_train.h5'):
    sh.shakespeare(download=False)


@pytest.mark.parametrize('kwargs', [{'sequence_length': 0},
                                    {'sequence_length': 2.5},
                                    {'packing': 'play'}])
def test_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    sh.shakespeare(data_dir='/nonexistent', **kwargs)


# --- archives and download ---------------------------------------------------


def make_archive(folder, members):
  """A tar.bz2 of ``{name: bytes}``; returns (path, sha256)."""
  path = os.path.join(folder, 'shakespeare.tar.bz2')
  with tarfile.open(path, 'w:bz2') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path, hashlib.sha256(open(path, 'rb').read()).hexdigest()


def h5_bytes(tmp_path, clients, name):
  path = tmp_path / name
  write_h5(path, clients)
  return path.read_bytes()




def test_download_checksum_mismatch_then_success(tmp_path, file_server,
                                                 monkeypatch):
  root, base = file_server
  members = {
      './shakespeare_train.h5': h5_bytes(tmp_path, {'A': [b'Hi.']}, 'a.h5'),
      'shakespeare_test.h5': h5_bytes(tmp_path, {'A': [b'Yo']}, 'b.h5'),
      'README': b'ignored'}
  _, sha = make_archive(str(root), members)
  cache = tmp_path / 'cache'
  monkeypatch.setenv(download.CACHE_ENV, str(cache))
  monkeypatch.setattr(sh, 'URL', f'{base}shakespeare.tar.bz2')

  monkeypatch.setattr(sh, 'SHA256', '0' * 64)
  with pytest.raises(download.DownloadError, match='checksum mismatch'):
    sh.shakespeare(sequence_length=4)
  assert not [p for p in cache.rglob('*') if p.is_file()]

  monkeypatch.setattr(sh, 'SHA256', sha)
  train, test = sh.shakespeare(sequence_length=4)
  assert train.features['y'].tolist() == [[H, i, DOT, 2]]
  assert test.features['y'].tolist() == [[Y, o, 2, 0]]
  assert sorted(p.name for p in (cache / 'shakespeare').iterdir()) == [
      'shakespeare.tar.bz2', 'shakespeare_test.h5', 'shakespeare_train.h5']
  # Later loads read the cache, offline.
  monkeypatch.setattr(sh, 'URL', 'http://127.0.0.1:9/unreachable')
  again, _ = sh.shakespeare(sequence_length=4, download=False)
  np.testing.assert_array_equal(again.features['x'], train.features['x'])


def test_archive_in_data_dir_is_checked_and_extracted(tmp_path, monkeypatch):
  members = {'shakespeare_train.h5': h5_bytes(tmp_path, {'A': [b'Hi']}, 'a'),
             'shakespeare_test.h5': h5_bytes(tmp_path, {'A': [b'Yo']}, 'b')}
  folder = tmp_path / 'data'
  folder.mkdir()
  _, sha = make_archive(str(folder), members)
  monkeypatch.setattr(sh, 'SHA256', 'f' * 64)
  with pytest.raises(ValueError, match=r'shakespeare\.tar\.bz2 has sha256'):
    sh.shakespeare(data_dir=str(folder))
  assert not (folder / 'shakespeare_train.h5').exists()
  monkeypatch.setattr(sh, 'SHA256', sha)
  train, _ = sh.shakespeare(sequence_length=3, data_dir=str(folder))
  assert train.features['x'].tolist() == [[1, H, i]]
  assert (folder / 'shakespeare_train.h5').exists()


def test_archive_with_unsafe_members_is_refused(tmp_path, monkeypatch):
  folder = tmp_path / 'data'
  folder.mkdir()
  path = folder / 'shakespeare.tar.bz2'
  with tarfile.open(path, 'w:bz2') as tar:
    evil = tarfile.TarInfo('../escaped.h5')
    evil.size = 3
    tar.addfile(evil, io.BytesIO(b'bad'))
    link = tarfile.TarInfo('shakespeare_train.h5')
    link.type = tarfile.SYMTYPE
    link.linkname = '/etc/passwd'
    tar.addfile(link)
  monkeypatch.setattr(sh, 'SHA256',
                      hashlib.sha256(path.read_bytes()).hexdigest())
  with pytest.raises(ValueError, match="unsafe member name '../escaped.h5'"):
    sh.shakespeare(data_dir=str(folder))
  assert not (tmp_path / 'escaped.h5').exists()
  assert not (folder / 'shakespeare_train.h5').exists()


def test_archive_missing_member_or_corrupt(tmp_path, monkeypatch):
  folder = tmp_path / 'data'
  folder.mkdir()
  path, sha = make_archive(str(folder), {'shakespeare_train.h5': b'x'})
  monkeypatch.setattr(sh, 'SHA256', sha)
  with pytest.raises(ValueError,
                     match=r'missing member\(s\) shakespeare_test\.h5'):
    sh.shakespeare(data_dir=str(folder))
  assert not (folder / 'shakespeare_train.h5').exists()   # all or nothing
  data = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(data[:len(data) // 2])
  monkeypatch.setattr(sh, 'SHA256', None)
  with pytest.raises(ValueError, match=r'shakespeare\.tar\.bz2'):
    sh.shakespeare(data_dir=str(folder))


# --- the real data -----------------------------------------------------------


def _real_folder():
  if not (REAL / 'shakespeare_train.h5').exists():
    pytest.skip(f'real Shakespeare data not found at {REAL}')
  return str(REAL)


def test_real_shakespeare():
  folder = _real_folder()
  raw = {}
  for split in sh.SPLITS:
    with h5py.File(os.path.join(folder, f'shakespeare_{split}.h5'), 'r') as f:
      raw[split] = {c: f['examples'][c]['snippets'][()].tolist()
                    for c in f['examples']}
  assert [len(raw[s]) for s in sh.SPLITS] == [715, 715]
  assert [sum(map(len, raw[s].values())) for s in sh.SPLITS] == [16068, 2356]

  train, test = sh.shakespeare(data_dir=folder)
  assert train.client_ids.tolist() == test.client_ids.tolist() == sorted(
      raw['train'])
  assert (train.num_examples, test.num_examples) == (37784, 5490)
  for d, split in ((train, 'train'), (test, 'test')):
    assert d.features['x'].shape == (d.num_examples, 80)
    assert np.all(d.sizes >= 1)
    lengths = np.array([len(s) for c in d.client_ids
                        for s in raw[split][c]])
    # Every snippet gives ceil((n + 2) / 81) chunks ...
    chunks = (lengths + 2 + 80) // 81
    assert d.num_examples == np.sum(chunks)
    # ... with one BOS, and every token but each chunk's first as a target.
    assert np.sum(d.features['x'] == sh.BOS) == lengths.size
    assert np.sum(d.features['y'] != sh.PAD) == np.sum(lengths + 2 - chunks)
    assert d.features['x'].min() >= 0 and d.features['x'].max() < 90
  # Client 0's first snippet, character by character.
  first = raw['train'][train.client_ids[0]][0]
  row = train.client(0)['y'][0]
  assert row[:len(first)].tolist() == [IDS.get(c, 89) for c in first]
  assert row[len(first)] == sh.EOS
  # FedJAX's packing keeps every transition: sum of (n + 2) - 1 per client.
  train_c, _ = sh.shakespeare(data_dir=folder, packing='client')
  assert train_c.num_examples == 30249
  assert np.sum(train_c.features['y'] != sh.PAD) == sum(
      sum(len(s) + 2 for s in raw['train'][c]) - 1 for c in raw['train'])
