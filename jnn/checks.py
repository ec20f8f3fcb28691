"""Argument rules (``rule(label, what, value) -> value``) and ``@declare(arg=rule, ...)``, which checks
a function's arguments on every call and keeps them as the returned layer's ``config``.

Example:
  >>> import jnn
  >>> @jnn.checks.declare(factor=jnn.checks.above(0))
  ... def scaled(factor, *, name=None):
  ...     return jnn.stateless("scaled", lambda x: factor * x, name=name)
  >>> scaled(2.0).config["factor"]
  2.0
  >>> scaled(-1.0)
  Traceback (most recent call last):
  ValueError: scaled: factor must be a positive number, got -1.0
"""
from jnn._checks import (above, between, declare, finite_number, flag, instance_of, layer_name, name_or_callable,
                         one_of, optional, positive_int, rate, spatial)

__all__ = ["declare", "above", "between", "finite_number", "flag", "instance_of", "layer_name",
           "name_or_callable", "one_of", "optional", "positive_int", "rate", "spatial"]
