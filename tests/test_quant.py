from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgekd.prune.sparsity import apply_2of4, is_2of4, mask_2of4
from edgekd.quant import (
    ActQuant,
    WeightFormat,
    fake_quantize_weight,
    fold_batchnorm,
    make_quant,
    quantize_weight,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [None, 4])
def test_codes_stay_in_range_and_dequantize_close(bits, symmetric, block):
    torch.manual_seed(0)
    w = torch.randn(6, 8, 3, 3)
    fmt = WeightFormat(bits, symmetric, block)
    qw = quantize_weight(w, fmt)
    lo, hi = fmt.qrange
    assert qw.q.min() >= lo and qw.q.max() <= hi
    assert torch.equal(qw.q, qw.q.round())
    err = (qw.dequantize() - w).abs()
    assert float((err / qw.scale).max()) <= 0.5 + 1e-4  # at most half a step everywhere


def test_blocked_scales_differ_per_block_along_input_dim():
    w = torch.ones(2, 8)
    w[:, 4:] *= 10
    qw = quantize_weight(w, WeightFormat(4, True, 4))
    assert float(qw.scale[0, 0]) != float(qw.scale[0, 4])
    assert torch.equal(qw.scale[:, :4], qw.scale[:, :1].expand(2, 4))


def test_pruned_zeros_stay_exactly_zero_after_quantization():
    torch.manual_seed(0)
    w = torch.randn(16, 32) + 3.0  # all positive: zero must still be representable
    w *= mask_2of4(w)
    for fmt in (
        WeightFormat(4, False, None),
        WeightFormat(3, True, 8),
        WeightFormat(2, False, None),
    ):
        deq = quantize_weight(w, fmt).dequantize()
        assert torch.equal(deq[w == 0], torch.zeros_like(deq[w == 0]))
        assert is_2of4(deq)


def test_fake_quant_passes_gradient_straight_through():
    w = torch.randn(4, 8, requires_grad=True)
    fake_quantize_weight(w, WeightFormat(4, False, None)).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_2of4_mask_keeps_two_largest_per_group_of_four_along_input():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3]])
    assert mask_2of4(w).tolist() == [[0, 1, 1, 0, 1, 0, 0, 1]]
    conv = torch.nn.Conv2d(8, 4, 3)
    apply_2of4(conv)
    assert is_2of4(conv.weight) and conv.weight_mask.shape == conv.weight.shape


def test_activation_fake_quant_matches_onnx_quantize_dequantize_exactly():
    torch.manual_seed(0)
    act = ActQuant().train()
    act(torch.randn(256) * 3 + 1)  # observe a range
    act.eval()
    x = torch.randn(4096) * 4
    scale, zp = act.qparams()
    node_q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])
    node_d = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    graph = helper.make_graph(
        [node_q, node_d], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("z", TensorProto.UINT8, [], [zp])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(act(x).detach().numpy(), expected)


def test_batchnorm_folding_keeps_outputs(tiny, example):
    before = tiny(example)
    folded = fold_batchnorm(tiny, example)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(example), before, rtol=1e-5, atol=1e-5)


def test_symmetric_activation_quant_has_zero_point_zero():
    act = ActQuant(symmetric=True).train()
    act(torch.tensor([-1.0, 3.0]))
    scale, zp = act.qparams()
    assert zp == 0 and scale == pytest.approx(3.0 / 127)


class PaddedConv(torch.nn.Conv2d):
    """A Conv2d subclass with its own forward, as EfficientNet's static 'same' padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(x, (1, 1, 1, 1))
        return torch.nn.functional.conv2d(x, self.weight, self.bias)


def test_a_conv_subclass_keeps_its_own_forward_with_quantized_weights():
    torch.manual_seed(0)
    conv = PaddedConv(4, 8, 3)
    fmt = WeightFormat(4, False, None)
    x = torch.randn(2, 4, 6, 6)
    make_quant(conv, fmt, activations=False)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1)),
        quantize_weight(conv.weight, fmt, conv.weight_clip).dequantize(),
        conv.bias,
    )
    assert isinstance(conv, PaddedConv) and conv.plain_class is PaddedConv
    torch.testing.assert_close(conv(x), expected)
    assert set(conv.state_dict()) == {"weight", "bias", "weight_clip"}
    conv(x).sum().backward()  # the straight-through gradient reaches the real parameter
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("block", [None, 8])
def test_searched_clipping_cuts_quantization_error_on_heavy_tailed_weights(block):
    from edgekd.quant.fake import search_clip

    torch.manual_seed(0)
    w = torch.distributions.StudentT(2.0).sample((16, 64))  # heavy tails, as trained weights
    fmt = WeightFormat(4, False, block)
    clip = search_clip(w, fmt)
    minmax = (quantize_weight(w, fmt).dequantize() - w).pow(2).sum()
    clipped = (quantize_weight(w, fmt, clip).dequantize() - w).pow(2).sum()
    assert clipped < minmax and ((clip >= 0.5) & (clip <= 1.0)).all()
    assert (search_clip(torch.zeros(4, 8), fmt) == 1).all()  # nothing to clip


def test_an_output_observer_spends_its_codes_within_the_following_activation():
    act = ActQuant(clamp=[0.0, 6.0]).train()
    act(torch.linspace(-50.0, 90.0, 1000))  # a depthwise conv's output before its ReLU6
    act.eval()
    scale, zero_point = act.qparams()
    assert scale == pytest.approx(6.0 / 255) and zero_point == 0  # 0 and 6 both exact
    x = torch.linspace(-50.0, 90.0, 1000)
    torch.testing.assert_close(
        act(x).clamp(0, 6), act(x.clamp(0, 6)), rtol=0, atol=0
    )  # quantizing before the ReLU6 is quantizing after it


@pytest.mark.parametrize(
    "layer", [torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Linear(16, 8)], ids=["conv", "linear"]
)
def test_calibration_takes_each_quantized_layers_mean_output_error_off_its_bias(layer):
    """Inputs with a large mean beside small variations (behind ReLU6 and folded BatchNorm):
    weight rounding shifts every output; the corrected layer's mean error is zero, exactly."""
    from edgekd.distill.train import calibrate

    torch.manual_seed(0)
    shape = (256, 4, 6, 6) if isinstance(layer, torch.nn.Conv2d) else (256, 16)
    x = 5 + 0.1 * torch.randn(shape)
    reference = copy.deepcopy(layer)
    model = torch.nn.Sequential(layer)
    make_quant(layer, WeightFormat(4, False, None), activations=True)
    channels = (0, 2, 3) if x.dim() == 4 else (0,)

    def mean_error() -> torch.Tensor:
        with torch.no_grad():
            return (model(x) - reference(x)).mean(channels)

    calibrate(model, x.numpy(), 64)
    corrected = mean_error()
    with torch.no_grad():
        layer.bias.copy_(reference.bias)
    uncorrected = mean_error()
    assert uncorrected.abs().max() > 0.05  # W4 on inputs near 5: a shift of tenths
    torch.testing.assert_close(corrected, torch.zeros_like(corrected), atol=1e-4, rtol=0)
