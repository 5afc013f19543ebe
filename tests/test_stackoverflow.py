"""Tests for fedjax_engine.datasets.stackoverflow (TFF Stack Overflow).

Small files in TFF's formats are written here: h5 ``examples/<user>/{tokens,
title,tags,...}``, ``stackoverflow.word_count`` lines and the JSON
``stackoverflow.tag_count``. Expected ids are written out from the documented
numbering (FedJAX's: PAD 0, BOS 1, EOS 2, word k of the vocabulary 3 + k,
OOV vocab_size + 3).
"""

import hashlib
import io
import json
import os
import tarfile

import h5py
import numpy as np
import pytest

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import download
from fedjax_engine.datasets import stackoverflow as so

WORDS = ['the', '.', 'code', 'is', 'a', 'to', 'i', 'bug']
# ids: the 3, . 4, code 5, is 6, a 7, to 8, i 9, bug 10; OOV with 8 words: 11
TAGS = {'python': 50, 'java': 70, 'c': 50, 'sql': 10, 'go': 70}
# ranked (stable by decreasing count): java, go, python, c, sql


def write_vocab(folder, words=WORDS, tags=TAGS):
  with open(os.path.join(folder, so.WORD_COUNT), 'w') as f:
    for k, w in enumerate(words):      # most frequent first, counts >= 1
      f.write(f'{w} {len(words) - k}\n')
  with open(os.path.join(folder, so.TAG_COUNT), 'w') as f:
    json.dump(tags, f)


def write_h5(path, clients, *, vlen=False):
  """``{user: [(tokens, title, tags), ...]}`` in TFF's layout."""
  with h5py.File(path, 'w') as f:
    for user, rows in clients.items():
      columns = {'tokens': [r[0] for r in rows], 'title': [r[1] for r in rows],
                 'tags': [r[2] for r in rows],
                 'type': ['question'] * len(rows),
                 'creation_date': ['2010-01-08 09:34:05 UTC'] * len(rows)}
      for name, values in columns.items():
        data = [v.encode() for v in values]
        if vlen:
          f.create_dataset(f'examples/{user}/{name}',
                           data=np.array(data, dtype=object),
                           dtype=h5py.string_dtype('ascii'))
        else:
          f[f'examples/{user}/{name}'] = np.array(data, dtype=bytes)
      f[f'examples/{user}/score'] = np.zeros(len(rows), np.int64)


def make_folder(tmp_path, train, test, **kw):
  folder = str(tmp_path)
  write_vocab(folder)
  write_h5(os.path.join(folder, 'stackoverflow_train.h5'), train, **kw)
  write_h5(os.path.join(folder, 'stackoverflow_test.h5'), test, **kw)
  return folder


def row(tokens, title='t', tags='python'):
  return (tokens, title, tags)


def test_id_conventions():
  assert (so.PAD, so.BOS, so.EOS) == (0, 1, 2)
  assert so.oov_id(10000) == 10003 and so.vocabulary_size(10000) == 10004


def test_vocabularies(tmp_path):
  write_vocab(str(tmp_path))
  assert so.load_words(3, data_dir=str(tmp_path)) == [b'the', b'.', b'code']
  assert so.load_tags(4, data_dir=str(tmp_path)) == [
      b'java', b'go', b'python', b'c']
  with pytest.raises(ValueError, match=r'stackoverflow\.word_count lists 8'):
    so.load_words(9, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r'stackoverflow\.tag_count lists 5'):
    so.load_tags(6, data_dir=str(tmp_path))
  (tmp_path / so.WORD_COUNT).write_text('the 5\nbad line here\n')
  with pytest.raises(ValueError, match=r'word_count, line 2'):
    so.load_words(2, data_dir=str(tmp_path))
  (tmp_path / so.TAG_COUNT).write_text('{"a": ')
  with pytest.raises(ValueError, match=r'stackoverflow\.tag_count is not'):
    so.load_tags(1, data_dir=str(tmp_path))


def test_nwp_hand_written_ids(tmp_path):
  folder = make_folder(tmp_path, {'u1': [
      row('the code is a bug .'),            # 6 words < 8: EOS, then PAD
      row('i code'),                          # short
      row('the the the the the the the'),     # 7 = L - 1 words: EOS last
      row('a a a a a a a a'),                 # 8 = L words: no EOS
      row('to to to to to to to to to zzz'),  # longer: truncated
      row('what  is'),                        # two spaces: an empty word
      row(''),                                # no words (one empty word)
  ]}, {'u1': [row('xyz .')]})
  train, test = so.stackoverflow_nwp(vocab_size=8, sequence_length=8,
                                     data_dir=folder)
  oov = 11
  assert train.features['x'].tolist() == [
      [1, 3, 5, 6, 7, 10, 4, 2],
      [1, 9, 5, 2, 0, 0, 0, 0],
      [1, 3, 3, 3, 3, 3, 3, 3],
      [1, 7, 7, 7, 7, 7, 7, 7],
      [1, 8, 8, 8, 8, 8, 8, 8],
      [1, oov, oov, 6, 2, 0, 0, 0],
      [1, oov, 2, 0, 0, 0, 0, 0]]
  assert train.features['y'].tolist() == [
      [3, 5, 6, 7, 10, 4, 2, 0],
      [9, 5, 2, 0, 0, 0, 0, 0],
      [3, 3, 3, 3, 3, 3, 3, 2],
      [7, 7, 7, 7, 7, 7, 7, 7],
      [8, 8, 8, 8, 8, 8, 8, 8],
      [oov, oov, 6, 2, 0, 0, 0, 0],
      [oov, 2, 0, 0, 0, 0, 0, 0]]
  assert test.features['y'].tolist() == [[oov, 4, 2, 0, 0, 0, 0, 0]]
  assert train.features['x'].dtype == train.features['y'].dtype == np.int32


def test_tags_hand_written_values(tmp_path):
  folder = make_folder(tmp_path, {'u1': [
      row('the code is', 'a bug', 'java|python'),
      row('zzz the', 'the\tend', 'go|go|unknown'),
      row('', '', ''),
  ]}, {'u1': [row('.', 'i', 'sql')]})
  train, test = so.stackoverflow_tags(vocab_size=8, num_tags=4,
                                      data_dir=folder)
  x, y = train.features['x'], train.features['y']
  assert x.dtype == y.dtype == np.float32 and x.shape == (3, 8)
  # words: the . code is a to i bug; 5 words, all in the vocabulary.
  np.testing.assert_array_equal(
      x[0], np.float32([1, 0, 1, 1, 1, 0, 0, 1]) / np.float32(5))
  # 'zzz the the end': 4 words, 2 OOV still count in the denominator.
  np.testing.assert_array_equal(x[1], np.float32([2, 0, 0, 0, 0, 0, 0, 0]) /
                                np.float32(4))
  np.testing.assert_array_equal(x[2], np.zeros(8))
  # tags: java go python c (sql is the 5th, out).
  assert y.tolist() == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0]]
  np.testing.assert_array_equal(test.features['x'],
                                [[0, .5, 0, 0, 0, 0, .5, 0]])
  assert test.features['y'].tolist() == [[0, 0, 0, 0]]


def _reference_nwp(sentences, table, oov, length):
  rows = []
  for s in sentences:
    words = s.split(' ')[:length]
    t = [1] + [table.get(w, oov) for w in words]
    if len(words) < length:
      t.append(2)
    t += [0] * (length + 1 - len(t))
    rows.append(t)
  rows = np.array(rows, np.int32).reshape(-1, length + 1)
  return rows[:, :-1], rows[:, 1:]


def _reference_tags(rows, table, tag_table, vocab, num_tags):
  x = np.zeros((len(rows), vocab), np.float32)
  y = np.zeros((len(rows), num_tags), np.float32)
  for k, (tokens, title, tags) in enumerate(rows):
    words = (tokens + ' ' + title).split()
    for w in words:
      if w in table:
        x[k, table[w]] += 1
    if words:
      x[k] /= np.float32(len(words))
    for tag in tags.split('|'):
      if tag in tag_table:
        y[k, tag_table[tag]] += 1
  return x, y


def test_matches_a_loop_reference_on_random_text(tmp_path):
  rng = np.random.default_rng(0)
  pool = WORDS + ['zz', 'qq', '']
  def sentence():
    return ' '.join(rng.choice(pool, rng.integers(0, 15)))
  def tags():
    return '|'.join(rng.choice(list(TAGS) + ['rust'], rng.integers(0, 4)))
  train = {f'user{k:02d}': [row(sentence(), sentence(), tags())
                            for _ in range(rng.integers(1, 12))]
           for k in range(20)}
  test = {u: rows[:2] for u, rows in list(train.items())[::3]}
  folder = make_folder(tmp_path, train, test, vlen=True)
  ids = sorted(train)
  nwp_train, nwp_test = so.stackoverflow_nwp(vocab_size=6, sequence_length=7,
                                             data_dir=folder)
  table = {w: 3 + k for k, w in enumerate(WORDS[:6])}
  for data, clients in ((nwp_train, train), (nwp_test, test)):
    assert data.client_ids.tolist() == ids
    x, y = _reference_nwp([r[0] for u in ids for r in clients.get(u, [])],
                          table, 9, 7)
    np.testing.assert_array_equal(data.features['x'], x)
    np.testing.assert_array_equal(data.features['y'], y)
    assert data.sizes.tolist() == [len(clients.get(u, [])) for u in ids]

  tag_train, tag_test = so.stackoverflow_tags(vocab_size=6, num_tags=3,
                                              data_dir=folder)
  table = {w: k for k, w in enumerate(WORDS[:6])}
  tag_table = {'java': 0, 'go': 1, 'python': 2}
  for data, clients in ((tag_train, train), (tag_test, test)):
    x, y = _reference_tags([r for u in ids for r in clients.get(u, [])],
                           table, tag_table, 6, 3)
    np.testing.assert_array_equal(data.features['x'], x)
    np.testing.assert_array_equal(data.features['y'], y)


def test_clients_union_subset_and_limits(tmp_path):
  folder = make_folder(
      tmp_path,
      {'b': [row('the')] * 3, 'a': [row('code')] * 5},
      {'c': [row('is')], 'a': [row('a')] * 2})
  train, test = so.stackoverflow_nwp(vocab_size=8, data_dir=folder)
  assert isinstance(train, FederatedData)
  assert train.client_ids.tolist() == test.client_ids.tolist() == [
      'a', 'b', 'c']
  assert train.sizes.tolist() == [5, 3, 0]
  assert test.sizes.tolist() == [2, 0, 1]
  assert train.features['x'].shape == (8, 20)
  assert so.stackoverflow_client_ids(data_dir=folder) == ['a', 'b', 'c']

  train, test = so.stackoverflow_nwp(vocab_size=8, data_dir=folder,
                                     client_ids=['c', 'a'], max_examples=2)
  assert train.client_ids.tolist() == ['c', 'a']
  assert train.sizes.tolist() == [0, 2] and test.sizes.tolist() == [1, 2]
  assert train.features['x'][:, 1].tolist() == [5, 5]
  with pytest.raises(ValueError, match=r"in neither.*\['zz'\]"):
    so.stackoverflow_nwp(vocab_size=8, data_dir=folder, client_ids=['a', 'zz'])
  train, _ = so.stackoverflow_tags(vocab_size=8, num_tags=2, max_clients=2,
                                   data_dir=folder)
  assert train.client_ids.tolist() == ['a', 'b']
  assert train.features['x'].shape == (8, 8)
  assert train.features['y'].shape == (8, 2)


# --- bad input ---------------------------------------------------------------


def test_truncated_h5_names_the_file(tmp_path):
  folder = make_folder(tmp_path, {'u': [row('the code')] * 200},
                       {'u': [row('a')]})
  path = os.path.join(folder, 'stackoverflow_train.h5')
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 3])
  with pytest.raises(ValueError, match=r'stackoverflow_train\.h5'):
    so.stackoverflow_nwp(vocab_size=8, data_dir=folder)


def test_missing_datasets_name_file_client_and_key(tmp_path):
  folder = make_folder(tmp_path, {'u': [row('the')]}, {'u': [row('a')]})
  with h5py.File(os.path.join(folder, 'stackoverflow_test.h5'), 'a') as f:
    del f['examples/u/title']
  so.stackoverflow_nwp(vocab_size=8, data_dir=folder)  # needs tokens only
  with pytest.raises(ValueError,
                     match=r"stackoverflow_test\.h5.*'u'.*'title'"):
    so.stackoverflow_tags(vocab_size=8, num_tags=2, data_dir=folder)
  with h5py.File(os.path.join(folder, 'stackoverflow_train.h5'), 'a') as f:
    del f['examples/u/tokens']
  with pytest.raises(ValueError,
                     match=r"stackoverflow_train\.h5.*'u'.*'tokens'"):
    so.stackoverflow_nwp(vocab_size=8, data_dir=folder)


def test_unequal_feature_lengths(tmp_path):
  folder = make_folder(tmp_path, {'u': [row('the'), row('a')]},
                       {'u': [row('a')]})
  with h5py.File(os.path.join(folder, 'stackoverflow_train.h5'), 'a') as f:
    del f['examples/u/tags']
    f['examples/u/tags'] = np.array([b'java'])
  with pytest.raises(ValueError, match=r'stackoverflow_train\.h5.*unequal'):
    so.stackoverflow_tags(vocab_size=8, num_tags=2, data_dir=folder)


def test_missing_files_name_them(tmp_path):
  folder = make_folder(tmp_path, {'u': [row('the')]}, {'u': [row('a')]})
  os.remove(os.path.join(folder, 'stackoverflow_test.h5'))
  with pytest.raises(FileNotFoundError,
                     match=r'stackoverflow_test\.h5.*stackoverflow\.tar\.bz2'):
    so.stackoverflow_nwp(vocab_size=8, data_dir=folder)
  os.remove(os.path.join(folder, so.WORD_COUNT))
  with pytest.raises(FileNotFoundError, match=r'stackoverflow\.word_count'):
    so.stackoverflow_nwp(vocab_size=8, data_dir=folder)


@pytest.mark.parametrize('kwargs', [
    {'vocab_size': 0}, {'sequence_length': 0}, {'max_examples': 0},
    {'max_clients': -1}])
def test_bad_arguments(kwargs):
  # Checked before any file is looked for.
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    so.stackoverflow_nwp(data_dir='/nonexistent', **{'vocab_size': 8,
                                                     **kwargs})


def test_archives_in_data_dir_are_checked_and_extracted(tmp_path,
                                                         monkeypatch):
  source = tmp_path / 'src'
  source.mkdir()
  make_folder(source, {'u': [row('the code')]}, {'u': [row('bug')]})
  data = tmp_path / 'data'
  data.mkdir()

  def archive(name, members):
    path = data / name
    with tarfile.open(path, 'w:bz2') as tar:
      for member in members:
        blob = (source / member).read_bytes()
        info = tarfile.TarInfo(member)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    return hashlib.sha256(path.read_bytes()).hexdigest()

  monkeypatch.setattr(so, 'SHA256', archive(
      so.ARCHIVE, ['stackoverflow_train.h5', 'stackoverflow_test.h5']))
  monkeypatch.setattr(so, 'WORD_COUNT_SHA256', archive(
      so.WORD_COUNT_ARCHIVE, [so.WORD_COUNT]))
  monkeypatch.setattr(so, 'TAG_COUNT_SHA256', '0' * 64)
  archive(so.TAG_COUNT_ARCHIVE, [so.TAG_COUNT])
  train, test = so.stackoverflow_nwp(vocab_size=8, sequence_length=4,
                                     data_dir=str(data))
  assert train.features['y'].tolist() == [[3, 5, 2, 0]]
  assert test.features['y'].tolist() == [[10, 2, 0, 0]]
  with pytest.raises(ValueError, match=r'tag_count\.tar\.bz2 has sha256'):
    so.stackoverflow_tags(vocab_size=8, num_tags=2, data_dir=str(data))


def test_download_off_names_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'cache'))
  with pytest.raises(FileNotFoundError, match=r'stackoverflow\.word_count'):
    so.stackoverflow_nwp(download=False)
