"""Model zoo: each factory returns a :class:`fedjax_engine.Model`."""

from fedjax_engine.models.dense import logistic_regression as logistic_regression
from fedjax_engine.models.dense import mlp as mlp

__all__ = ['logistic_regression', 'mlp']
