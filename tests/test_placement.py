"""The placement on the mesh and the per-layer hop distances it gives the pricing."""

from __future__ import annotations

import pytest

from hw_profiles import load_profile
from spikegpt_deploy.placement import Mesh, route
from spikegpt_deploy.profiling import core_mapping, count_ops, price_target
from profiling_helpers import SPIKES_HAND, W_HAND, hand_ir

E_HOP, T_HOP, T_BARRIER = 4.0, 6.5, 465.0   # loihi2 [energy] / [timing] spike_hop, barrier


def test_two_layers_with_different_hops_get_their_own_noc_energy() -> None:
    ir = hand_ir(W_HAND)
    chip = load_profile("loihi2")                 # one core per tile
    mapping = core_mapping(ir, chip)
    placement = mapping["placement"]
    # topological order, one core each; 4 tiles -> a 2 x 2 mesh, tile t at (t // 2, t % 2)
    assert {n: u["cores"] for n, u in placement["units"].items()} == {
        "blocks.0.lif1": [0], "emb.heaviside": [1], "ln_out.counts": [2], "head.spikes": [3]}
    assert placement["mesh"] == {"width": 2, "height": 2, "chips": 1}
    # emb (0,1) -> ln_out.counts (1,0): 2 hops; lif1 (0,0) -> (1,0): 1; ln_out -> head (1,1): 1
    assert {s: r["hops"] for s, r in placement["routes"].items()} == {
        "emb.heaviside": 2.0, "blocks.0.lif1": 1.0, "ln_out.counts": 1.0}
    price = price_target(count_ops(ir, SPIKES_HAND), chip, resources=mapping,
                         host_timing=load_profile("cpu"))
    layers = price["layers"]
    # messages per token: emb 6 / 3 tokens, blocks.0 3 / 3, head (non-zero n) 8 / 3
    assert layers["emb"]["spike_hop"] == pytest.approx(2 * 2.0 * E_HOP)
    assert layers["blocks.0"]["spike_hop"] == pytest.approx(1 * 1.0 * E_HOP)
    assert layers["head"]["spike_hop"] == pytest.approx(8 / 3 * 1.0 * E_HOP)
    assert price["mapping"]["hops_per_layer"]["emb"] == {"hops": 2.0, "chip_hops": 0.0}
    assert price["mapping"]["hops_per_message"] == pytest.approx((6 * 2 + 3 + 8) / 17)
    # the network term of the timestep: the layer whose messages travel farthest
    step = price["latency"]["timestep"]
    assert step["network_layer"] == "emb" and step["network_ns"] == pytest.approx(2 * T_HOP)
    assert step["timestep_ns"] == pytest.approx(step["compute_ns"] + 2 * T_HOP + T_BARRIER)


def test_cores_of_one_tile_take_no_hop() -> None:
    ir = hand_ir(W_HAND)
    chip = load_profile("loihi")                  # 4 cores per tile: the 4 units share one
    price = price_target(count_ops(ir, SPIKES_HAND), chip, resources=core_mapping(ir, chip),
                         host_timing=load_profile("cpu"))
    assert all(row["spike_hop"] == 0 for row in price["layers"].values())
    assert price["mapping"]["placement"]["mesh"] == {"width": 1, "height": 1, "chips": 1}


def test_route_weights_cores_by_neurons_and_counts_chip_hops() -> None:
    mesh = Mesh.for_cores(6, cores_per_tile=1, cores_per_chip=3)   # 2 chips of 3 cores
    assert (mesh.width, mesh.height, mesh.chips) == (2, 2, 2)
    assert mesh.hops(0, 2) == (1, 0) and mesh.hops(0, 5) == (1, 1)
    # a source of 3 neurons on cores 0 (2 neurons) and 1 (1 neuron), one reader on core 2
    r = route(mesh, [0, 1], 3, [([2], 4)])
    assert r.hops == pytest.approx(2 / 3 * 1 + 1 / 3 * 2) and r.chip_hops == 0
    # the same reader on the other chip: core 5 sits where core 2 does, one chip away
    r = route(mesh, [0, 1], 3, [([5], 4)])
    assert r.hops == pytest.approx(2 / 3 * 1 + 1 / 3 * 2) and r.chip_hops == 1


def test_given_hops_override_the_placement() -> None:
    ir = hand_ir(W_HAND)
    chip = load_profile("loihi2")
    price = price_target(count_ops(ir, SPIKES_HAND), chip, hops=3.0,
                         resources=core_mapping(ir, chip), host_timing=load_profile("cpu"))
    assert price["layers"]["blocks.0"]["spike_hop"] == pytest.approx(1 * 3.0 * E_HOP)
    assert not price["mapping"]["placed"]
