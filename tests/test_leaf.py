"""LEAF JSON loaders: FEMNIST, Shakespeare, Sent140, bad files, real sample."""

import json
import os
import pathlib

import numpy as np
import pytest

from fedjax_engine.datasets import download
from fedjax_engine.datasets import leaf

REAL = (pathlib.Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' /
        'femnist' / 'leaf_json_sample')


def write_leaf(path, user_data, *, num_samples=None, users=None, order=None):
  """Writes one LEAF file; ``user_data``: {user: (x list, y list)}."""
  users = list(user_data) if users is None else users
  if num_samples is None:
    num_samples = [len(user_data[u][1]) for u in users]
  data = {'users': users, 'num_samples': num_samples,
          'user_data': {u: {'x': x, 'y': y} for u, (x, y) in user_data.items()}}
  if order is not None:
    data = {k: data[k] for k in order}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data))
  return path


def image(value, mark=None):
  """A flat 784-pixel image of ``value``; pixel ``mark`` (row, col) = 0."""
  x = [value] * 784
  if mark is not None:
    x[28 * mark[0] + mark[1]] = 0.0
  return x


@pytest.fixture
def femnist_dir(tmp_path):
  """Train: two files (u2 then u1; u3). Test: u1 only."""
  root = tmp_path / 'femnist'
  write_leaf(root / 'train' / 'part_0.json', {
      'u2': ([image(0.5, (0, 1)), image(0.25)], [61, 0]),
      'u1': ([image(1.0, (27, 0))], [10])})
  write_leaf(root / 'train' / 'part_1.json', {
      'u3': ([image(0.75)], [35])})
  write_leaf(root / 'test' / 'part_0.json', {
      'u1': ([image(0.125), image(0.375, (2, 3))], [9, 36])})
  return root


def test_femnist_exact_values(femnist_dir):
  train, test = leaf.leaf_femnist(data_dir=str(femnist_dir))
  assert train.client_ids.tolist() == test.client_ids.tolist() == [
      'u1', 'u2', 'u3']
  assert train.sizes.tolist() == [1, 2, 1]
  assert test.sizes.tolist() == [2, 0, 0]
  x, y = train.features['x'], train.features['y']
  assert x.dtype == np.float32 and x.shape == (4, 28, 28)
  assert y.dtype == np.int32 and y.tolist() == [10, 61, 0, 35]
  assert x[:, 5, 5].tolist() == [1.0, 0.5, 0.25, 0.75]
  assert x[0, 27, 0] == 0.0 and x[0, 0, 27] == 1.0   # flat index 28*r + c
  assert x[1, 0, 1] == 0.0 and x[1, 1, 0] == 0.5
  assert test.features['y'].tolist() == [9, 36]
  assert test.features['x'][1, 2, 3] == 0.0
  assert test.features['x'][1, 3, 2] == 0.375


def test_femnist_invert(femnist_dir):
  train, _ = leaf.leaf_femnist(data_dir=str(femnist_dir), invert=True)
  assert train.features['x'][:, 5, 5].tolist() == [0.0, 0.5, 0.75, 0.25]
  assert train.features['x'][0, 27, 0] == 1.0


def test_users_disjoint_between_splits(tmp_path):
  """LEAF's --by_user split: each user only in train or only in test."""
  write_leaf(tmp_path / 'train' / 'a.json', {'t1': ([image(0.5)], [1])})
  write_leaf(tmp_path / 'test' / 'a.json', {'s1': ([image(0.5)] * 3,
                                                   [2, 3, 4])})
  train, test = leaf.leaf_femnist(data_dir=str(tmp_path))
  assert train.client_ids.tolist() == ['s1', 't1']
  assert train.sizes.tolist() == [0, 1]
  assert test.sizes.tolist() == [3, 0]


def test_unlisted_empty_user_data_is_ignored(tmp_path):
  """LEAF's split_data.py keeps empty entries of users it dropped."""
  write_leaf(tmp_path / 'train' / 'a.json', {
      'kept': ([image(0.5)], [1]), 'dropped': ([], [])}, users=['kept'])
  write_leaf(tmp_path / 'test' / 'a.json', {
      'kept': ([image(0.5)], [2]), 'dropped': ([], [])}, users=['kept'])
  train, _ = leaf.leaf_femnist(data_dir=str(tmp_path))
  assert train.client_ids.tolist() == ['kept']


def test_unlisted_user_with_samples(femnist_dir):
  write_leaf(femnist_dir / 'test' / 'part_0.json', {
      'u1': ([image(0.1)], [1]), 'ghost': ([image(0.1)], [2])}, users=['u1'])
  with pytest.raises(ValueError, match=r"test/part_0\.json: user_data holds "
                     "samples of user 'ghost', who is not in \"users\""):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_other_key_order_is_read_in_full(tmp_path):
  write_leaf(tmp_path / 'train' / 'a.json', {'w': ([image(0.5)], [4])},
             order=['user_data', 'num_samples', 'users'])
  write_leaf(tmp_path / 'test' / 'a.json', {'w': ([image(0.5)], [5])},
             order=['num_samples', 'user_data', 'users'])
  train, test = leaf.leaf_femnist(data_dir=str(tmp_path))
  assert train.features['y'].tolist() == [4]
  assert test.features['y'].tolist() == [5]


@pytest.mark.parametrize('cut', [30, -30])
def test_invalid_json(femnist_dir, cut):
  """Cut in the head (found by the first pass) or in the samples (second)."""
  path = femnist_dir / 'train' / 'part_1.json'
  text = path.read_text()
  path.write_text(text[:cut])
  with pytest.raises(ValueError, match=r'train/part_1\.json is not valid JSON '
                     r'\(truncated or corrupt\?\)'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_num_samples_mismatch(femnist_dir):
  write_leaf(femnist_dir / 'test' / 'part_0.json',
             {'u1': ([image(0.1), image(0.2)], [1, 2])}, num_samples=[3])
  with pytest.raises(ValueError, match=r"test/part_0\.json: user 'u1' has "
                     'num_samples 3 but 2 x and 2 y'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


@pytest.mark.parametrize('num_x, num_y', [(2, 1), (1, 2)])
def test_x_y_lengths_differ(femnist_dir, num_x, num_y):
  write_leaf(femnist_dir / 'test' / 'part_0.json',
             {'u1': ([image(0.1)] * num_x, [1] * num_y)}, num_samples=[2])
  with pytest.raises(ValueError, match=r"test/part_0\.json: user 'u1' has "
                     f'num_samples 2 but {num_x} x and {num_y} y'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_users_and_num_samples_lengths_differ(femnist_dir):
  write_leaf(femnist_dir / 'test' / 'part_0.json',
             {'u1': ([image(0.1)], [1])}, num_samples=[1, 1])
  with pytest.raises(ValueError, match=r'test/part_0\.json: 1 users but 2 '
                     'num_samples'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


@pytest.mark.parametrize('label', [62, -1])
def test_label_out_of_range(femnist_dir, label):
  write_leaf(femnist_dir / 'train' / 'part_1.json',
             {'u3': ([image(0.1), image(0.1)], [3, label])})
  with pytest.raises(ValueError, match=rf"train/part_1\.json: user 'u3' has "
                     rf'label {label}, outside \[0, 62\)'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_non_integer_label(femnist_dir):
  write_leaf(femnist_dir / 'train' / 'part_1.json', {'u3': ([image(0.1)],
                                                            ['a'])})
  with pytest.raises(ValueError, match=r"train/part_1\.json: user 'u3' has "
                     'labels that are not integers'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


@pytest.mark.parametrize('pixels', [783, 785])
def test_wrong_pixel_count(femnist_dir, pixels):
  write_leaf(femnist_dir / 'train' / 'part_1.json',
             {'u3': ([[0.5] * pixels], [1])})
  with pytest.raises(ValueError, match=rf"train/part_1\.json: user 'u3' has "
                     rf'images of shape \({pixels},\), expected \(784,\)'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_ragged_images(femnist_dir):
  write_leaf(femnist_dir / 'train' / 'part_1.json',
             {'u3': ([[0.5] * 784, [0.5] * 10], [1, 2])})
  with pytest.raises(ValueError, match=r"train/part_1\.json: user 'u3' has x "
                     'that is not a list of 784-number lists'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_pixel_value_out_of_range(femnist_dir):
  write_leaf(femnist_dir / 'train' / 'part_1.json',
             {'u3': ([image(1.5)], [1])})
  with pytest.raises(ValueError, match=r"train/part_1\.json: user 'u3' has "
                     r'pixel values outside \[0, 1\]'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_empty_client(femnist_dir):
  write_leaf(femnist_dir / 'train' / 'part_1.json',
             {'u3': ([image(0.1)], [1]), 'e': ([], [])})
  with pytest.raises(ValueError, match=r"train/part_1\.json: user 'e' is "
                     'listed with 0 samples'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_user_in_two_files(femnist_dir):
  write_leaf(femnist_dir / 'train' / 'part_1.json', {'u1': ([image(0.1)],
                                                            [1])})
  with pytest.raises(ValueError, match=r"user 'u1' appears in both "
                     r'.*train/part_0\.json and .*train/part_1\.json'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_missing_test_split(femnist_dir):
  for name in os.listdir(femnist_dir / 'test'):
    os.remove(femnist_dir / 'test' / name)
  with pytest.raises(FileNotFoundError, match=r'the test split is missing: '
                     r'.*test holds no \*\.json file'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))
  os.rmdir(femnist_dir / 'test')
  with pytest.raises(FileNotFoundError, match=r'the test split is missing: no '
                     'folder .*test'):
    leaf.leaf_femnist(data_dir=str(femnist_dir))


def test_default_folder_is_the_cache(tmp_path, monkeypatch, femnist_dir):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'cache'))
  with pytest.raises(FileNotFoundError, match=r'cache/leaf/femnist/train'):
    leaf.leaf_femnist()
  os.makedirs(tmp_path / 'cache' / 'leaf')
  os.symlink(femnist_dir, tmp_path / 'cache' / 'leaf' / 'femnist')
  train, _ = leaf.leaf_femnist()
  assert train.sizes.tolist() == [1, 2, 1]


def test_read_leaf_raw(femnist_dir):
  train, test = leaf.read_leaf(str(femnist_dir / 'train'),
                               str(femnist_dir / 'test'))
  assert sorted(train) == ['u1', 'u2', 'u3'] and sorted(test) == ['u1']
  assert train['u2']['y'] == [61, 0]
  assert len(train['u2']['x'][0]) == 784
  write_leaf(femnist_dir / 'test' / 'part_0.json',
             {'u1': ([image(0.1)], [1])}, num_samples=[4])
  with pytest.raises(ValueError, match=r"test/part_0\.json: user 'u1' has "
                     'num_samples 4'):
    leaf.read_leaf(str(femnist_dir / 'train'), str(femnist_dir / 'test'))


# ---------------------------------------------------------------------------
# Shakespeare.


def test_shakespeare_ids_follow_fedjax_vocabulary():
  # FedJAX's table: 0 pad, 1 bos, 2 eos, 3 + position in its character
  # string, 89 out of vocabulary (values worked out by hand from the string).
  assert leaf.shakespeare_char_ids('To be, or not?\n!').tolist() == [
      14, 26, 16, 44, 67, 19, 16, 26, 48, 16, 47, 26, 7, 43, 65, 81]
  assert leaf.shakespeare_char_ids('d\r}>\u00e9\u4e2d').tolist() == [
      3, 88, 89, 89, 89, 89]
  assert leaf.SHAKESPEARE_VOCAB_SIZE == 90 and leaf.SHAKESPEARE_OOV == 89


def test_shakespeare_ids_agree_with_shakespeare_loader():
  shakespeare = pytest.importorskip('fedjax_engine.datasets.shakespeare')
  text = ''.join(chr(c) for c in range(256)) + '\u4e2d\u00e9'
  np.testing.assert_array_equal(leaf.shakespeare_char_ids(text),
                                shakespeare.encode(text))


def test_shakespeare_exact_values(tmp_path):
  write_leaf(tmp_path / 'train' / 'a.json', {
      'ROMEO': (['To b', 'o be'], ['e', ',']), 'JULIET': (['dd}d'], ['\r'])})
  write_leaf(tmp_path / 'test' / 'a.json', {'ROMEO': (['not?'], ['\n'])})
  train, test = leaf.leaf_shakespeare(data_dir=str(tmp_path), seq_len=4)
  assert train.client_ids.tolist() == ['JULIET', 'ROMEO']
  assert train.sizes.tolist() == [1, 2] and test.sizes.tolist() == [0, 1]
  assert train.features['x'].dtype == np.int32
  assert train.features['x'].tolist() == [[3, 3, 89, 3], [14, 26, 16, 44],
                                          [26, 16, 44, 67]]
  assert train.features['y'].tolist() == [88, 67, 19]
  assert test.features['x'].tolist() == [[47, 26, 7, 43]]
  assert test.features['y'].tolist() == [65]


def test_shakespeare_default_length_is_80(tmp_path):
  write_leaf(tmp_path / 'train' / 'a.json', {'A': (['d' * 80], ['h'])})
  write_leaf(tmp_path / 'test' / 'a.json', {'A': (['h' * 80], ['d'])})
  train, test = leaf.leaf_shakespeare(data_dir=str(tmp_path))
  assert train.features['x'].shape == (1, 80)
  assert set(train.features['x'][0].tolist()) == {3}
  assert test.features['y'].tolist() == [3]


def test_shakespeare_bad_lengths(tmp_path):
  write_leaf(tmp_path / 'train' / 'a.json', {'A': (['abcd', 'abc'], ['e',
                                                                     'f'])})
  write_leaf(tmp_path / 'test' / 'a.json', {'A': (['abcd'], ['e'])})
  with pytest.raises(ValueError, match=r"train/a\.json: user 'A' has an x that "
                     "is not a string of 4 characters: 'abc'"):
    leaf.leaf_shakespeare(data_dir=str(tmp_path), seq_len=4)
  write_leaf(tmp_path / 'train' / 'a.json', {'A': (['abcd'], ['ef'])})
  with pytest.raises(ValueError, match=r"train/a\.json: user 'A' has a y that "
                     "is not one character: 'ef'"):
    leaf.leaf_shakespeare(data_dir=str(tmp_path), seq_len=4)


# ---------------------------------------------------------------------------
# Sent140.


def tweet(text):
  return ['1467810369', 'Mon Apr 06 22:19:45 PDT 2009', 'NO_QUERY', 'user',
          text]


@pytest.fixture
def sent140_dir(tmp_path):
  write_leaf(tmp_path / 'train' / 'a.json', {
      'bob': ([tweet('Good day good'), tweet('bad day!')], [1, 0]),
      'amy': ([tweet("it's ok")], [1])})
  write_leaf(tmp_path / 'test' / 'a.json', {
      'bob': ([tweet('good night')], [1]), 'cat': ([tweet('Bad, bad')], [0])})
  return tmp_path


def test_sent140_exact_values(sent140_dir):
  train, test, vocab = leaf.leaf_sent140(data_dir=str(sent140_dir), max_len=4,
                                         return_vocab=True)
  # Train counts: day 2, good 2, then !, bad, it's, ok once each.
  assert vocab == ['<pad>', '<unk>', 'day', 'good', '!', 'bad', "it's", 'ok']
  assert train.client_ids.tolist() == ['amy', 'bob', 'cat']
  assert train.sizes.tolist() == [1, 2, 0] and test.sizes.tolist() == [0, 1, 1]
  assert train.features['x'].tolist() == [[6, 7, 0, 0], [3, 2, 3, 0],
                                          [5, 2, 4, 0]]
  assert train.features['y'].tolist() == [1, 1, 0]
  # 'night' and ',' never occur in train: unknown.
  assert test.features['x'].tolist() == [[3, 1, 0, 0], [5, 1, 5, 0]]
  assert test.features['y'].tolist() == [1, 0]
  assert train.features['x'].dtype == test.features['y'].dtype == np.int32


def test_sent140_vocab_size_and_truncation(sent140_dir):
  train, test, vocab = leaf.leaf_sent140(data_dir=str(sent140_dir), max_len=2,
                                         vocab_size=4, return_vocab=True)
  assert vocab == ['<pad>', '<unk>', 'day', 'good']
  assert train.features['x'].tolist() == [[1, 1], [3, 2], [1, 2]]
  assert test.features['x'].tolist() == [[3, 1], [1, 1]]


def test_sent140_default_length(sent140_dir):
  train, test = leaf.leaf_sent140(data_dir=str(sent140_dir))
  assert train.features['x'].shape == (3, 25)
  assert test.features['x'].shape == (2, 25)


def test_sent140_bad_label_and_record(sent140_dir):
  write_leaf(sent140_dir / 'test' / 'a.json', {'bob': ([tweet('x')], [2])})
  with pytest.raises(ValueError, match=r"test/a\.json: user 'bob' has label 2, "
                     r'outside \[0, 2\)'):
    leaf.leaf_sent140(data_dir=str(sent140_dir))
  write_leaf(sent140_dir / 'test' / 'a.json', {'bob': ([['id', 'text']], [1])})
  with pytest.raises(ValueError, match=r"test/a\.json: user 'bob' has an x that "
                     'is not a LEAF record with the text at index 4'):
    leaf.leaf_sent140(data_dir=str(sent140_dir))


# ---------------------------------------------------------------------------
# The real LEAF FEMNIST shard pair (../shared/data/femnist/leaf_json_sample).


def test_real_leaf_femnist_sample():
  if not (REAL / 'train').is_dir() or not (REAL / 'test').is_dir():
    pytest.skip(f'real LEAF FEMNIST sample not found: {REAL}')
  train, test = leaf.leaf_femnist(data_dir=str(REAL))
  ids = ['f3848_28', 'f3857_01', 'f3862_40', 'f4027_34', 'f4071_32']
  assert train.client_ids.tolist() == test.client_ids.tolist() == ids
  assert train.sizes.tolist() == [164, 157, 162, 131, 149]
  assert test.sizes.tolist() == [19, 18, 18, 15, 17]
  assert train.features['y'][:5].tolist() == [8, 8, 8, 7, 7]
  assert test.features['y'][:5].tolist() == [2, 1, 0, 6, 5]
  np.testing.assert_allclose(
      train.features['x'][0, 14, 10:14],
      [0.996078431372549, 0.8235294117647058, 0.17254901960784313, 0.0],
      rtol=1e-6)
  for data in (train, test):
    x, y = data.features['x'], data.features['y']
    assert x.shape[1:] == (28, 28) and x.dtype == np.float32
    assert 0 <= y.min() and y.max() < 62 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.mean() > 0.9
