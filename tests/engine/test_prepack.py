"""oneDNN-prepacked linears against ``F.linear`` (float32 rounding apart), on every row count the
engine runs them with."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.prepack import PrepackedLinear, prepack_available, prepack_linears

pytestmark = pytest.mark.skipif(
    not prepack_available(torch.device("cpu"), torch.float32), reason="this torch build has no oneDNN"
)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("in_features", "out_features"), [(576, 1536), (1536, 576), (64, 250), (40, 24)])
def test_a_prepacked_linear_equals_f_linear(in_features, out_features, bias):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    packed = PrepackedLinear(linear)
    for rows in (1, 3, 8, 33, 300):
        x = torch.randn(rows, in_features)
        expect = F.linear(
            x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double()
        )
        torch.testing.assert_close(packed(x).double(), expect, rtol=1e-5, atol=1e-4)
    x = torch.randn(2, 5, in_features)  # leading dimensions are kept
    torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-4)
    assert packed(torch.empty(0, in_features)).shape == (0, out_features)


def test_every_linear_of_a_model_is_replaced_and_a_tied_head_keeps_the_embedding():
    model = nn.Module()
    model.embed = nn.Embedding(100, 32)
    model.block = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 32))
    model.head = nn.Linear(32, 100, bias=False)
    model.head.weight = model.embed.weight
    x = torch.randn(4, 32)
    expect = model.head(model.block(x))
    assert prepack_linears(model) == 3
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    torch.testing.assert_close(model.head(model.block(x)), expect, rtol=1e-5, atol=1e-5)
    assert model.embed.weight.shape == (100, 32)  # the embedding still has its weight
