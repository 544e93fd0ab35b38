"""The SpikeGPT model: parallel == RNN mode, an independent spec reference, LIF/WKV math, layout.

Spec: docs/model.md (sections 2 and 3.1).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig, SpikeGPTState
from spikegpt_deploy.model.layers import (
    ATAN_ALPHA,
    heaviside,
    lif_sequence,
    lif_step,
    wkv_closed_form,
    wkv_scan,
)

T = 16  # tokens per test sequence


def _idx(seed: int, batch: int = 2, t: int = T, vocab: int = 13) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, t), generator=torch.Generator().manual_seed(seed))


def _run_parallel(model: SpikeGPT, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
    with torch.no_grad(), model.record_spikes() as rec:
        logits = model(idx)
    return logits, rec.spikes()


def _run_rnn(model: SpikeGPT, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
    state = model.init_state(idx.shape[0])
    outs = []
    with torch.no_grad(), model.record_spikes() as rec:
        for t in range(idx.shape[1]):
            logits, state = model.step(idx[:, t], state)
            outs.append(logits)
    return torch.stack(outs, dim=1), rec.spikes()


# ---- an independent implementation of the spec, written from the equations ------------------

def _ln(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]


def _shift(a: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(a[:1]), a[:-1]])


def _mix(a: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    mu = mu.reshape(-1)
    return mu * a + (1 - mu) * _shift(a)


def _channel_mix(sd: dict, p: str, a: torch.Tensor) -> torch.Tensor:
    k = sd[p + "key.weight"] @ _mix(a, sd[p + "time_mix_k"]).T            # (4C, T)
    r = sd[p + "receptance.weight"] @ _mix(a, sd[p + "time_mix_r"]).T      # (C, T)
    return (torch.sigmoid(r) * (sd[p + "value.weight"] @ torch.relu(k) ** 2)).T


def _time_mix(sd: dict, p: str, a: torch.Tensor) -> torch.Tensor:
    k = _mix(a, sd[p + "time_mix_k"]) @ sd[p + "key.weight"].T
    v = _mix(a, sd[p + "time_mix_v"]) @ sd[p + "value.weight"].T
    r = torch.sigmoid(_mix(a, sd[p + "time_mix_r"]) @ sd[p + "receptance.weight"].T)
    w, u = -torch.exp(sd[p + "time_decay"]), sd[p + "time_first"]
    wkv = torch.empty_like(v)
    for t in range(a.shape[0]):  # the plain exp-sum formula of spec 2.4
        num, den = torch.exp(u + k[t]) * v[t], torch.exp(u + k[t])
        for i in range(t):
            e = torch.exp((t - 1 - i) * w + k[i])
            num, den = num + e * v[i], den + e
        wkv[t] = num / den
    return (r * wkv) @ sd[p + "output.weight"].T


def _lif(x: torch.Tensor) -> torch.Tensor:
    v, out = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / 2
        s = (h >= 1.0).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def reference_forward(model: SpikeGPT, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One sequence (T,) -> logits (T, V) and spikes {name: (T, C)}, in float64."""
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    x = sd["emb.weight"][tokens]
    spikes = {}
    if cfg.binary_embedding:
        x = (x >= 0).double()
        spikes["emb"] = x
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        scale = 1.0 if cfg.rescale_every == 0 else 2.0 ** -(i // cfg.rescale_every)
        if i == 0:
            x = _ln(x, sd, p + "ln0")
        a = _ln(x, sd, p + "ln1")
        if p + "ffnPre.key.weight" in sd:
            out = _channel_mix(sd, p + "ffnPre.", a)
        else:
            out = _time_mix(sd, p + "att.", a)
        for j, name in ((1, "lif1"), (2, "lif2")):
            if j == 2:
                out = _channel_mix(sd, p + "ffn.", _ln(x, sd, p + "ln2"))
            out = out * scale
            if cfg.spiking:
                out = _lif(out)
                spikes[p + name] = out
            x = x + out
        if cfg.rescale_every and (i + 1) % cfg.rescale_every == 0:
            x = x / 2
    return _ln(x, sd, "ln_out") @ sd["head.weight"].T, spikes


# ---- parallel mode == RNN mode ----------------------------------------------------------------

@pytest.mark.parametrize("rescale_every", [0, 2])
def test_every_population_fires(model_type: str, rescale_every: int) -> None:
    """Guards the spike tests below against vacuity: every population fires, none saturates."""
    model = make_tiny_model(model_type, rescale_every=rescale_every)
    _, spikes = _run_parallel(model, _idx(0))
    assert list(spikes) == model.population_names()
    assert len(spikes) == 1 + 2 * model.config.n_layer
    for name, s in spikes.items():
        rate = s.float().mean().item()
        assert 0.0 < rate < 0.9, f"{name} fires at rate {rate}"
        assert set(s.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rescale_every", [0, 2])
def test_parallel_equals_rnn(model_type: str, seed: int, rescale_every: int) -> None:
    model = make_tiny_model(model_type, seed=seed, rescale_every=rescale_every)
    idx = _idx(100 + seed)
    par_logits, par_spikes = _run_parallel(model, idx)
    rnn_logits, rnn_spikes = _run_rnn(model, idx)
    assert par_logits.shape == rnn_logits.shape == (2, T, model.config.vocab_size)
    assert (par_logits - rnn_logits).abs().max().item() < 1e-5
    assert list(par_spikes) == list(rnn_spikes) == model.population_names()
    total = 0
    for name in par_spikes:
        assert par_spikes[name].shape == rnn_spikes[name].shape == (2, T, model.config.n_embd)
        assert torch.equal(par_spikes[name], rnn_spikes[name]), name
        total += int(par_spikes[name].sum())
    assert total > 0


@pytest.mark.parametrize("spiking", [True, False])
@pytest.mark.parametrize("rescale_every", [0, 2])
def test_matches_independent_reference(model_type: str, spiking: bool, rescale_every: int
                                       ) -> None:
    """Our parallel mode against the spec's equations written out (float64, naive WKV sums)."""
    model = make_tiny_model(model_type, seed=7, rescale_every=rescale_every, spiking=spiking)
    idx = _idx(3, batch=1)
    logits, spikes = _run_parallel(model, idx)
    ref_logits, ref_spikes = reference_forward(model, idx[0])
    assert (logits[0].double() - ref_logits).abs().max().item() < 1e-4
    assert list(spikes) == list(ref_spikes)
    for name, s in spikes.items():
        assert torch.equal(s[0], ref_spikes[name].to(torch.uint8)), name


# ---- spiking=False ----------------------------------------------------------------------------

@pytest.mark.parametrize("binary_embedding", [True, False])
def test_non_spiking_is_identity(model_type: str, binary_embedding: bool) -> None:
    spiking = make_tiny_model(model_type, seed=4, binary_embedding=binary_embedding)
    plain = make_tiny_model(model_type, seed=4, binary_embedding=binary_embedding, spiking=False)
    idx = _idx(5)
    out_spiking, _ = _run_parallel(spiking, idx)
    out_plain, spikes = _run_parallel(plain, idx)
    assert list(spikes) == (["emb"] if binary_embedding else [])
    assert plain.population_names() == list(spikes)
    assert (out_plain - out_spiking).abs().max().item() > 1e-2
    # Identity LIF: the reference with the LIF left out gives the same logits.
    ref, _ = reference_forward(plain, idx[0])
    assert (out_plain[0].double() - ref).abs().max().item() < 1e-4
    # RNN mode agrees, and the membranes stay untouched.
    rnn_out, rnn_spikes = _run_rnn(plain, idx)
    assert list(rnn_spikes) == list(spikes)
    assert (rnn_out - out_plain).abs().max().item() < 1e-5
    _, state = plain.step(idx[:, 0], plain.init_state(2))
    assert not state.lif1_v.any() and not state.lif2_v.any()


# ---- RNN state --------------------------------------------------------------------------------

def _advanced_state(model: SpikeGPT, steps: int = 5) -> SpikeGPTState:
    state = model.init_state(2)
    with torch.no_grad():
        for t in range(steps):
            _, state = model.step(_idx(9)[:, t], state)
    return state


def test_step_does_not_mutate_state(model_type: str) -> None:
    model = make_tiny_model(model_type)
    state = _advanced_state(model)
    assert state.lif1_v.any() and state.lif2_v.any() and state.wkv_den.any()
    before = state.clone()
    with torch.no_grad():
        _, new = model.step(torch.tensor([1, 2]), state)
    for name in SpikeGPTState.names():
        assert torch.equal(getattr(state, name), getattr(before, name)), name
    assert any(not torch.equal(getattr(new, n), getattr(state, n)) for n in SpikeGPTState.names())


def test_state_pack_round_trip(model_type: str) -> None:
    model = make_tiny_model(model_type)
    state = _advanced_state(model)
    packed = state.to_tensor()
    L, C = model.config.n_layer, model.config.n_embd
    assert packed.shape == (len(SpikeGPTState.names()), L, 2, C)
    back = SpikeGPTState.from_tensor(packed)
    for j, name in enumerate(SpikeGPTState.names()):
        assert torch.equal(getattr(back, name), getattr(state, name)), name
        assert torch.equal(packed[j], getattr(state, name))
    # step_packed is step on the packed form.
    tokens = torch.tensor([3, 4])
    with torch.no_grad():
        logits, new = model.step(tokens, state)
        logits_p, packed_new = model.step_packed(tokens, packed)
    assert torch.equal(logits, logits_p)
    assert torch.equal(packed_new, new.to_tensor())


def test_init_state_values() -> None:
    model = make_tiny_model()
    state = model.init_state(3)
    for name in SpikeGPTState.names():
        t = getattr(state, name)
        assert t.shape == (3, 3, 16)
        if name == "wkv_max":
            assert (t <= -1e29).all()  # pp starts very negative (spec 2.10)
        else:
            assert not t.any(), name


# ---- building blocks --------------------------------------------------------------------------

@pytest.mark.parametrize("k_scale", [1.0, 4.0, 8.0, 40.0])
def test_wkv_scan_equals_closed_form(k_scale: float) -> None:
    gen = torch.Generator().manual_seed(int(k_scale))
    B, Tn, C = 2, 24, 8
    w = -torch.exp(torch.randn(C, generator=gen))
    u = torch.randn(C, generator=gen)
    k = torch.randn(B, Tn, C, generator=gen) * k_scale
    v = torch.randn(B, Tn, C, generator=gen)
    scan, closed = wkv_scan(w, u, k, v), wkv_closed_form(w, u, k, v)
    assert scan.shape == closed.shape == (B, Tn, C)
    assert torch.isfinite(scan).all() and torch.isfinite(closed).all()
    truth = wkv_closed_form(w.double(), u.double(), k.double(), v.double())
    if k_scale <= 8:
        assert (scan - closed).abs().max().item() < 1e-5
    else:
        # exponents ~100: float32 exp() alone is off by ~1e-5 relative; both stay stable.
        assert (scan.double() - truth).abs().max().item() < 1e-4
        assert (closed.double() - truth).abs().max().item() < 1e-4
    if k_scale == 1.0:
        # The closed form (float64) against the plain exp-sum of spec 2.4, overflow-free here.
        num = torch.zeros(B, Tn, C, dtype=torch.float64)
        den = torch.zeros_like(num)
        kd, vd, wd, ud = k.double(), v.double(), w.double(), u.double()
        for t in range(Tn):
            num[:, t] = torch.exp(ud + kd[:, t]) * vd[:, t]
            den[:, t] = torch.exp(ud + kd[:, t])
            for i in range(t):
                e = torch.exp((t - 1 - i) * wd + kd[:, i])
                num[:, t] += e * vd[:, i]
                den[:, t] += e
        assert (truth - num / den).abs().max().item() < 1e-10
        assert (scan.double() - num / den).abs().max().item() < 1e-5


def test_lif_step_matches_spec_formula() -> None:
    # (V, X) pairs, including H exactly at the threshold (fires: the comparison is >=).
    cases = [(0.0, 2.0), (1.0, 1.0), (0.5, 1.5), (0.0, 1.9999998), (0.5, 1.4), (0.9, 0.9),
             (0.0, -3.0), (0.99, 1.0), (-0.5, 2.5), (0.25, 0.25)]
    v = torch.tensor([c[0] for c in cases])
    x = torch.tensor([c[1] for c in cases])
    s, v_new = lif_step(x, v)
    for j, (vj, xj) in enumerate(cases):
        h = vj + (xj - vj) / 2
        fire = h >= 1.0
        assert s[j].item() == float(fire), (vj, xj)
        assert v_new[j].item() == pytest.approx(0.0 if fire else h, abs=1e-7), (vj, xj)
    assert s.tolist()[:3] == [1.0, 1.0, 1.0]  # exact equality fires
    assert s[3].item() == 0.0                   # just below does not


def test_lif_sequence_carries_membrane_over_tokens() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 20, 5, generator=gen) * 2.2
    spikes, v_last = lif_sequence(x, torch.zeros(3, 5))
    v = torch.zeros(3, 5)
    for t in range(20):
        h = v + (x[:, t] - v) / 2
        s = (h >= 1).float()
        v = h * (1 - s)
        assert torch.equal(spikes[:, t], s)
    assert torch.equal(v_last, v)
    assert 0 < spikes.mean().item() < 1
    # A constant input of 1.5 integrates: H = 0.75 (silent), then 1.125 (fires), then reset.
    s, _ = lif_sequence(torch.full((1, 4, 1), 1.5), torch.zeros(1, 1))
    assert s.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_heaviside_embedding_zero_fires() -> None:
    model = make_tiny_model()
    with torch.no_grad():
        model.emb.weight[2] = torch.tensor([0.0, -0.0, -1e-8, 1e-8] * 4)
        _, spikes = _run_parallel(model, torch.tensor([[2, 2]]))
    assert spikes["emb"][0, 0].tolist() == [1, 1, 0, 1] * 4


def test_surrogate_gradient_formula() -> None:
    x = torch.tensor([-1.0, -0.1, 0.0, 0.3, 2.0], requires_grad=True)
    y = heaviside(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    expected = (ATAN_ALPHA / 2) / (1 + (math.pi / 2 * ATAN_ALPHA * x.detach()) ** 2)
    assert torch.allclose(x.grad, expected)


def test_gradient_flows_through_lif(model_type: str) -> None:
    model = make_tiny_model(model_type).train()
    idx = _idx(11, t=12)
    logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
    loss.backward()
    # emb reaches the loss only through the Heaviside embedding's surrogate.
    assert model.emb.weight.grad is not None and model.emb.weight.grad.abs().sum() > 0
    # time_decay reaches the loss only through lif1's spikes: non-zero grads prove the surrogate.
    n_att = 0
    for block in model.blocks:
        if hasattr(block, "att"):
            n_att += 1
            assert block.att.time_decay.grad is not None
            assert block.att.time_decay.grad.abs().sum() > 0
        sub = block.ffnPre if hasattr(block, "ffnPre") else block.att
        assert sub.key.weight.grad.abs().sum() > 0
        assert block.ffn.key.weight.grad.abs().sum() > 0
    assert n_att == model.config.n_layer - (model_type == "RWKV-ffnPre")


# ---- state_dict layout (spec 3.1) -------------------------------------------------------------

def spec_layout(L: int, C: int, V: int, model_type: str) -> list[tuple[str, tuple]]:
    """The key order and shapes of spec section 3.1, written out from the table."""
    keys: list[tuple[str, tuple]] = [("emb.weight", (V, C))]
    for i in range(L):
        b = f"blocks.{i}."
        keys += [(b + "ln1.weight", (C,)), (b + "ln1.bias", (C,)),
                 (b + "ln2.weight", (C,)), (b + "ln2.bias", (C,))]
        if i == 0:
            keys += [(b + "ln0.weight", (C,)), (b + "ln0.bias", (C,))]
        if i == 0 and model_type == "RWKV-ffnPre":
            keys += [(b + "ffnPre.time_mix_k", (1, 1, C)), (b + "ffnPre.time_mix_r", (1, 1, C)),
                     (b + "ffnPre.key.weight", (4 * C, C)),
                     (b + "ffnPre.receptance.weight", (C, C)),
                     (b + "ffnPre.value.weight", (C, 4 * C))]
        else:
            keys += [(b + "att.time_decay", (C,)), (b + "att.time_first", (C,)),
                     (b + "att.time_mix_k", (1, 1, C)), (b + "att.time_mix_v", (1, 1, C)),
                     (b + "att.time_mix_r", (1, 1, C))]
            keys += [(b + f"att.{n}.weight", (C, C))
                     for n in ("key", "value", "receptance", "output")]
        keys += [(b + "ffn.time_mix_k", (1, 1, C)), (b + "ffn.time_mix_r", (1, 1, C)),
                 (b + "ffn.key.weight", (4 * C, C)), (b + "ffn.receptance.weight", (C, C)),
                 (b + "ffn.value.weight", (C, 4 * C))]
    keys += [("ln_out.weight", (C,)), ("ln_out.bias", (C,)), ("head.weight", (V, C))]
    return keys


@pytest.mark.parametrize("n_layer", [1, 3])
def test_state_dict_layout_matches_spec(model_type: str, n_layer: int) -> None:
    model = make_tiny_model(model_type, n_layer=n_layer)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == spec_layout(n_layer, 16, 13, model_type)
    expected_keys = 18 * n_layer + 6 - (4 if model_type == "RWKV-ffnPre" else 0)
    assert len(got) == expected_keys
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


def test_216m_layout_and_parameter_count() -> None:
    """The official 216M config (spec 0.5/1.3): 330 keys and 215,399,424 parameters."""
    with torch.device("meta"):
        model = SpikeGPT(SpikeGPTConfig(vocab_size=50277, n_layer=18, n_embd=768))
    sd = model.state_dict()
    assert len(sd) == 330
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == spec_layout(18, 768, 50277, "RWKV")
    C, V = 768, 50277
    assert model.num_parameters() == 18 * (13 * C * C + 11 * C) + 2 * V * C + 4 * C == 215_399_424
