"""Model zoo: each factory returns a :class:`fedjax_engine.Model`.

Example:

  >>> import jax, jax.numpy as jnp
  >>> model = logistic_regression(num_features=4, num_classes=3)
  >>> params = model.init(jax.random.key(0))
  >>> model.apply(params, {'x': jnp.ones((2, 4))}).shape
  (2, 3)
"""

from fedjax_engine.models import sequence as sequence
from fedjax_engine.models.cnn import emnist_cnn as emnist_cnn
from fedjax_engine.models.cnn import femnist_cnn as femnist_cnn
from fedjax_engine.models.dense import logistic_regression as logistic_regression
from fedjax_engine.models.dense import mlp as mlp
from fedjax_engine.models.dense import multilabel_logistic_regression as multilabel_logistic_regression
from fedjax_engine.models.resnet import resnet18_gn as resnet18_gn
from fedjax_engine.models.rnn import char_lstm as char_lstm
from fedjax_engine.models.rnn import sent140_lstm as sent140_lstm
from fedjax_engine.models.rnn import stackoverflow_lstm as stackoverflow_lstm
from fedjax_engine.models.transformer import transformer_lm as transformer_lm

__all__ = [
    'char_lstm', 'emnist_cnn', 'femnist_cnn', 'logistic_regression', 'mlp',
    'multilabel_logistic_regression', 'resnet18_gn', 'sent140_lstm',
    'sequence', 'stackoverflow_lstm', 'transformer_lm',
]
