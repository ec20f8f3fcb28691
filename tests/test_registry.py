"""Every registered layer (see registry.py and tests/cases/) passes the public conformance kit."""
import pytest

import jnn.testing
from registry import CASES, KEY


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layer_passes_check_layer(case):
    jnn.testing.check_layer(case.make(), case.input(), key=KEY, train=case.train, stochastic=case.stochastic,
                            batch_independent=case.batch_independent, grad_modes=case.grad_modes,
                            input_grads=case.input_grads, grad_order=case.grad_order, atol=case.atol)
