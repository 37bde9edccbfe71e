"""Latency table units of Vision Transformers: layer norms, token linears, GELU and the attention core, checked
against a hand enumeration, against the operators the built network runs, and (ONNX) against torch; the table
sum grows with heads and MLP widths; a ViT space calibrates."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunenas.arch import Architecture
from prunenas.families import vit
from prunenas.latency import LatencyTable, calibration_report, get_device, units
from prunenas.latency.units import Unit
from prunenas.spaces import load_space

# 2 blocks, 32 features, 2 heads of 16, MLP 48, 4x4 patches of an 8x8 image: 4 patches + class token = 5 tokens.
# Block 0 keeps both branches, block 1 loses its attention and halves its MLP.
OPTIONS = {"depth": 2, "embed_dim": 32, "heads": 2, "mlp_dim": 48, "patch": 4}


def _tiny() -> Architecture:
    return Architecture.create("vit", None, OPTIONS, (3, 8, 8), 10).with_widths([32, 2, 48, 0, 24])


def test_units_of_a_tiny_vit_against_a_hand_enumeration():
    # (kind, in, out, tokens, heads, activation); every linear and the patch conv have a bias, nothing has BN
    ln = ("ln", 32, 32, 5, 0, "")
    expected = [
        ("conv", 3, 32, 4, 0, ""),  # the patch embedding: 2x2 positions, no activation
        ln, ("linear", 32, 96, 5, 0, ""), ("attention", 96, 32, 5, 2, ""), ("linear", 32, 32, 5, 0, ""),
        ln, ("linear", 32, 48, 5, 0, "gelu"), ("linear", 48, 32, 5, 0, ""),
        ln, ("linear", 32, 24, 5, 0, "gelu"), ("linear", 24, 32, 5, 0, ""),
        ln, ("linear", 32, 10, 1, 0, ""),  # the head reads the class token only
    ]
    got = units(_tiny().layers)
    assert [(u.kind, u.in_channels, u.out_channels, u.tokens, u.heads, u.act) for u in got] == expected
    assert not any(u.bn for u in got)
    assert [u.bias for u in got] == [u.kind in ("conv", "linear") for u in got]
    conv = got[0]
    assert (conv.kernel, conv.stride, conv.out_hw, conv.input_shape) == (4, 4, (2, 2), (3, 8, 8))
    assert len({u.key for u in got}) == 10  # the four layer norms share one geometry


def test_units_are_the_operators_the_built_vit_runs(monkeypatch):
    """The built network, hooked: every conv, layer norm, linear, GELU and attention core it runs, with the
    input shape it runs on, in order, is what the units list (a unit with GELU is its linear, then the GELU)."""
    arch, batch, ran = _tiny(), 3, []
    model = arch.build().eval()
    kinds = {nn.Conv2d: "conv", nn.LayerNorm: "ln", nn.Linear: "linear", nn.GELU: "gelu"}
    for module in model.modules():
        if type(module) in kinds:
            module.register_forward_hook(lambda m, x, y: ran.append((kinds[type(m)], tuple(x[0].shape))))
    core = vit.packed_attention
    monkeypatch.setattr(vit, "packed_attention",
                        lambda qkv, *a: ran.append(("attention", tuple(qkv.shape))) or core(qkv, *a))
    with torch.no_grad():
        model(torch.zeros(batch, *arch.input_shape))
    expected = []
    for unit in units(arch.layers):
        expected.append((unit.kind, (batch, *unit.input_shape)))
        if unit.act == "gelu":
            expected.append(("gelu", (batch, unit.tokens, unit.out_channels)))
    assert ran == expected


def test_attention_unit_is_scaled_dot_product_attention():
    unit = Unit("attention", 3 * 2 * 8, 2 * 8, out_hw=(7, 1), heads=2)
    qkv = torch.randn(4, 7, 48)
    q, k, v = (qkv[..., part * 16:(part + 1) * 16].view(4, 7, 2, 8).transpose(1, 2) for part in range(3))
    reference = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(4, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(unit.module()(qkv), reference)


def _run_onnx(unit: Unit, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    import onnxruntime as ort
    from onnx import numpy_helper

    model = unit.onnx_model(17)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return session.run(None, {"input": x})[0], weights


def test_onnx_token_units_compute_what_torch_computes():
    rng = np.random.default_rng(2)
    attention = Unit("attention", 48, 16, out_hw=(7, 1), heads=2)
    x = rng.standard_normal((3, 7, 48), dtype=np.float32)
    out, _ = _run_onnx(attention, x)
    np.testing.assert_allclose(out, attention.module()(torch.from_numpy(x)).numpy(), atol=1e-5)

    norm = Unit("ln", 24, 24, out_hw=(5, 1))
    x = rng.standard_normal((3, 5, 24), dtype=np.float32)
    out, _ = _run_onnx(norm, x)
    np.testing.assert_allclose(out, F.layer_norm(torch.from_numpy(x), (24,), eps=1e-6).numpy(), atol=1e-5)

    mlp = Unit("linear", 24, 40, bias=True, out_hw=(5, 1), act="gelu")
    out, w = _run_onnx(mlp, x)
    hidden = x @ w["w"] + w["b"]
    gelu = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
    np.testing.assert_allclose(out, gelu, rtol=1e-4, atol=1e-4)

    patch = units(_tiny().layers)[0]
    out, _ = _run_onnx(patch, rng.standard_normal((3, 3, 8, 8), dtype=np.float32))
    assert out.shape == (3, 32, 2, 2)


def test_table_sum_of_a_vit_grows_with_heads_and_mlp_width(tmp_path):
    space = load_space("vit-tiny-fashionmnist")  # 4 blocks: stream 64, then (heads, mlp) per block, base (4, 128)
    small, more_heads, wider_mlp = (space.arch([64] + [heads, mlp] * 4) for heads, mlp in
                                    ((1, 16), (4, 16), (1, 128)))
    table = LatencyTable(get_device("cpu-torch", batch=8), tmp_path, repeats=7, warmup=2)
    table.unit_times([u for a in (small, more_heads, wider_mlp) for u in units(a.layers)])  # one interleaved fill
    assert table.table_sum(more_heads) > table.table_sum(small)
    assert table.table_sum(wider_mlp) > table.table_sum(small)
    assert table.entries["attention:192>64:h4:t65"] > table.entries["attention:48>16:h1:t65"]


def test_calibration_report_runs_on_a_vit_space(tmp_path):
    space = load_space("vit-tiny-fashionmnist")
    table = LatencyTable(get_device("cpu-torch", batch=1), tmp_path, repeats=2, warmup=0)
    report = calibration_report(space, table, n=4, repeats=3, warmup=1)
    assert (report["fit"], report["test"]) == (2, 2)
    assert math.isfinite(report["predictor"]["median_abs_pct"]) and math.isfinite(table.predict(space.base))
    kinds = {key.split(":")[0] for key in table.entries}
    assert kinds == {"conv", "ln", "linear", "attention"}


@pytest.mark.parametrize("space", ["deit-tiny-imagenet", "vit-b16-imagenet"])
def test_imagenet_vit_units_count_every_block(space):
    arch = load_space(space).base
    got = units(arch.layers)
    depth, tokens = arch.opts["depth"], (224 // arch.opts["patch"]) ** 2 + 1
    assert sum(u.kind == "attention" for u in got) == depth and sum(u.kind == "ln" for u in got) == 2 * depth + 1
    assert {u.tokens for u in got if u.kind != "conv"} == {1, tokens}
    assert {u.heads for u in got if u.kind == "attention"} == {arch.opts["heads"]}
