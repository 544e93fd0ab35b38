"""Profiler: measured op counts of a SpikeGPT deployment, priced on hardware profiles.

Steps (one explicit order): capture -> fold_layernorm -> partition (per chip target) -> record
spikes (PyTorch RNN mode) -> ``count_ops`` -> ``price_target`` / ``price_ann`` /
``paper_formula`` -> ``ProfileResult`` (written by ``report`` and ``html``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hw_profiles import HardwareProfile, load_profile

from ..errors import ConversionError, DataError, ProfileError
from ..inputs import check_count, check_token_ids
from ..naming import layer_of
from .counts import OpCounts, count_ops, record_spikes_pytorch
from .windows import count_targets, partition_targets, split_windows
from .op_costs import HOST_OP_KINDS, ann_op_counts, op_cost
from .pricing import (PAPER_FIRING_RATE, ProfileResult, load_host, paper_formula, price_ann,
                      price_target)

__all__ = ["HOST_OP_KINDS", "OpCounts", "PAPER_FIRING_RATE", "ProfileResult", "ann_op_counts",
           "count_ops", "graded_input_trace", "layer_of", "op_cost", "paper_formula",
           "price_ann", "price_target", "profile_bundle", "profile_checkpoint", "profile_model",
           "record_spikes_pytorch"]

log = logging.getLogger(__name__)
DEFAULT_ANN_PROFILES = ("cmos45nm", "gpu")


def _as_profile(p: str | Path | HardwareProfile) -> HardwareProfile:
    return p if isinstance(p, HardwareProfile) else load_profile(p)


def _check_tokens(tokens: int) -> None:
    check_count(tokens, "--tokens", 1)


def graded_input_trace(ir: Any, token_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Float inputs (T, in) of every chip Linear, from the numpy Executor on the same tokens.

    Graded synaptic ops depend on the values, not only on spikes; the Executor's float arithmetic
    may flip a rare spike against PyTorch's, so this trace is the IR's own account of the run.
    """
    from ..interpreter import Executor

    chip_linears = [n for n in ir.nodes_of("Linear") if ir.node(n)["placement"] != "host"]
    if not chip_linears:
        return {}
    ex = Executor(ir)
    state = ex.init_state(1)
    ports = {n: ir.inputs(n)[0] for n in chip_linears}
    trace: dict[str, list[np.ndarray]] = {n: [] for n in chip_linears}
    for tok in np.asarray(token_ids, dtype=np.int64).reshape(-1):
        res = ex.step(np.array([tok]), state, keep_values=True)
        state = res.state
        for n, p in ports.items():
            trace[n].append(res.values[(p.node, p.port)][0])
    return {n: np.stack(v) for n, v in trace.items()}


def core_mapping(ir: Any, chip: HardwareProfile) -> dict[str, Any] | None:
    """Cores per chip node (``map_resources``) with their placement on the mesh
    (``placement.place``, under ``'placement'``), or None where the profile cannot map them (a
    missing capacity figure): the work-based timestep is then reported as unsupported."""
    from ..placement import place
    from ..resources import map_resources

    try:
        resources = map_resources(ir, chip)
        return {**resources, "placement": place(ir, resources, chip)}
    except ProfileError as exc:
        log.info("no core mapping on %s: %s", chip.name, exc)
        return None


def chip_mappings(folded: Any, chips: Sequence[HardwareProfile], policy: str,
                  graded_bits: int = 8, partitioned: Mapping[str, Any] | None = None
                  ) -> dict[str, dict[str, Any] | None]:
    """The core mapping of every target that can run the folded model (for the work-based
    timestep); a target the partitioner refuses is left out (its price says why).
    ``partitioned``: ``partition_targets``' result, when the caller has it."""
    from ..partition import partition

    out: dict[str, dict[str, Any] | None] = {}
    for chip in chips:
        if partitioned is not None:
            ir = partitioned[chip.name]
            if not isinstance(ir, str):
                out[chip.name] = core_mapping(ir, chip)
            continue
        try:
            out[chip.name] = core_mapping(partition(folded, chip, policy, graded_bits), chip)
        except ConversionError:
            continue
    return out


def profile_model(model: Any, token_ids: Sequence[int] | np.ndarray,
                  profile: str | Path | HardwareProfile | Sequence[Any] = "loihi2",
                  policy: str = "spikes", *, host_profile: str | Path | None = None,
                  ann_profiles: Sequence[str | Path | HardwareProfile] = DEFAULT_ANN_PROFILES,
                  timesteps: float | None = None, hops: float | None = None,
                  graded_bits: int = 8, sensitivity_factor: float = 2.0,
                  window: int | None = None,
                  host_timing: str | Path | HardwareProfile = "cpu", neurobench: bool = False,
                  meta: Mapping[str, Any] | None = None) -> ProfileResult:
    """Count and price ``model`` on ``token_ids`` for one or more chip targets; with
    ``neurobench``, NeuroBench's metrics on the same tokens beside the first target's counts.

    The IR is partitioned for every target (a target that cannot run the model is reported as
    unsupported with the partitioner's reason); targets with the same placement share one count.
    ``window``: run the tokens as windows of that many tokens, each from the zero state (None:
    one stream).
    """
    from converters.torch_capture import capture_ir

    from ..passes.fold import fold_layernorm

    chips = chip_profiles(profile)
    host_timing = _as_profile(host_timing)   # a bad name fails before the work
    if neurobench:   # fail before the work when the optional extra is missing
        if window is not None:
            raise DataError("--neurobench runs NeuroBench over one stream of tokens; drop "
                            "--window (and --workers/--address) to compare with it")
        from .neurobench_metrics import require_neurobench
        require_neurobench()
    ids = np.asarray(check_token_ids(token_ids, model.config.vocab_size, "token_ids"),
                     dtype=np.int64)
    partitioned = partition_targets(fold_layernorm(capture_ir(model)), chips, policy,
                                    graded_bits)
    counted = count_targets(model, split_windows(ids, window), chips, policy, graded_bits,
                            partitioned=partitioned)
    mappings = chip_mappings(None, chips, policy, graded_bits, partitioned)
    result = assemble_result(dict(model.config.to_dict()), chips, counted, policy,
                             host_profile=host_profile, ann_profiles=ann_profiles,
                             timesteps=timesteps, hops=hops, graded_bits=graded_bits,
                             sensitivity_factor=sensitivity_factor, window=window,
                             host_timing=host_timing, mappings=mappings, meta=meta)
    if neurobench:
        from .neurobench_metrics import neurobench_compare

        first = chips[0]
        log.info("running NeuroBench's metrics on %d tokens", len(ids))
        result.neurobench = neurobench_compare(
            model, ids, partitioned[first.name], result.counts[first.name],
            record_spikes_pytorch(model, ids), mappings.get(first.name))
    return result


def chip_profiles(profile: str | Path | HardwareProfile | Sequence[Any]) -> list[HardwareProfile]:
    """One target or a list of them (names, TOML paths or loaded profiles), loaded."""
    targets = [profile] if isinstance(profile, (str, Path, HardwareProfile)) else list(profile)
    if not targets:
        raise ProfileError("no chip target given; pass at least one (e.g. loihi2)")
    return [_as_profile(t) for t in targets]


def assemble_result(model_config: Mapping[str, Any], chips: Sequence[HardwareProfile],
                    counted: Mapping[str, OpCounts | str], policy: str, *,
                    host_profile: str | Path | None = None,
                    ann_profiles: Sequence[str | Path | HardwareProfile] = DEFAULT_ANN_PROFILES,
                    timesteps: float | None = None, hops: float | None = None,
                    graded_bits: int = 8, sensitivity_factor: float = 2.0,
                    window: int | None = None,
                    host_timing: str | Path | HardwareProfile = "cpu",
                    mappings: Mapping[str, dict[str, Any] | None] | None = None,
                    meta: Mapping[str, Any] | None = None) -> ProfileResult:
    """Price the counts of every target (``count_targets``' result, or merged shard counts);
    ``mappings``: the core mapping per target (``chip_mappings``) for the work-based timestep."""
    counts: dict[str, OpCounts] = {}
    prices: dict[str, dict[str, Any]] = {}
    timing = _as_profile(host_timing)
    for chip in chips:
        c = counted[chip.name]
        if isinstance(c, str):
            prices[chip.name] = {"target": {"name": chip.name, "title": chip.title,
                                            "sha256": chip.sha256},
                                 "complete": False, "per_token": {"total": None},
                                 "unsupported": [{"what": "placement", "profile": chip.name,
                                                  "key": "[capability]", "reason": c}]}
            continue
        counts[chip.name] = c
        host = load_host(chip, str(host_profile) if host_profile is not None else None)
        prices[chip.name] = price_target(c, chip, host, timesteps, hops, sensitivity_factor,
                                         resources=(mappings or {}).get(chip.name),
                                         host_timing=timing)
    primary = counts[chips[0].name]
    ann = {p.name: price_ann(primary.ann, p) for p in map(_as_profile, ann_profiles)}
    paper = paper_formula(primary, {t: p for t, p in prices.items() if t in counts})
    info = {"model_config": dict(model_config), "tokens": int(primary.tokens),
            "policy": policy, "targets": [c.name for c in chips],
            "host_profile": str(host_profile) if host_profile else None,
            "timesteps": timesteps, "hops": hops, "graded_bits": graded_bits,
            "sensitivity_factor": sensitivity_factor, "recording": "pytorch-rnn",
            "host_timing": timing.name, "window": window, **dict(meta or {})}
    return ProfileResult(info, counts, prices, ann, paper)

def profile_checkpoint(model_path: str | Path | None, data: str, tokens: int,
                       targets: Sequence[str] = ("loihi2",), host_profile: str | None = None,
                       user_profiles: Sequence[str] = (), policy: str = "spikes",
                       split: str = "valid", *, cluster: Any = None,
                       tokenizer_path: str | Path | None = None,
                       overrides: Mapping[str, Any] | None = None,
                       **options: Any) -> ProfileResult:
    """Load a model file (default: the shipped one; ``tokenizer_path`` for a bare .pth,
    ``overrides`` as for ``load_model``) and profile it on the first ``tokens`` tokens of the
    ``split`` of ``data``; ``user_profiles`` are TOML files: chip ones add targets, a host one
    prices the host ops, ann ones add baselines.

    ``cluster`` (a ``distributed.Cluster``) splits the windows across Ray workers, each opening
    the model the same way; the window then defaults to the model's context length (pass the
    same ``window`` to a single-process run for the same figures)."""
    from ..data import encode_split, load_corpus
    from ..model_files import open_model, require_tokenizer

    _check_tokens(tokens)
    chips: list[Any] = list(targets) or ["loihi2"]
    anns: list[Any] = list(DEFAULT_ANN_PROFILES)
    host: Any = host_profile
    for path in user_profiles:
        prof = load_profile(Path(path))
        if prof.role == "chip":
            chips.append(prof)
        elif prof.role == "ann":
            anns.append(prof)
        elif host is not None:
            raise ProfileError(f"{path} is a host profile, but --host-profile {host} was given "
                               f"too; pass only one host profile")
        else:
            host = path
    loaded = open_model(model_path, tokenizer_path, **dict(overrides or {}))
    corpus = load_corpus(data)
    ids = encode_split(require_tokenizer(loaded), corpus, split)
    if len(ids) < tokens:
        raise DataError(f"the {split} split of {data} has {len(ids)} tokens, fewer than "
                        f"--tokens {tokens}; ask for fewer tokens or use a longer text")
    meta = {"model": str(loaded.path), "model_sha256": loaded.sha256, "data": data,
            "data_sha256": corpus.sha256, "split": split,
            "options": {"targets": [getattr(c, "name", c) for c in chips],
                        "host_profile": str(host) if host else None,
                        "user_profiles": [str(p) for p in user_profiles], "policy": policy,
                        **options}}
    if cluster is None:
        return profile_model(loaded.model, ids[:tokens], chips, policy, host_profile=host,
                             ann_profiles=anns, meta=meta, **options)
    if options.pop("neurobench", False):
        raise DataError("--neurobench runs NeuroBench over one stream in this process; drop "
                        "--workers/--address to compare with it")
    if options.get("window") is None:
        options["window"] = meta["options"]["window"] = int(loaded.model.config.ctx_len)
    config, path = dict(loaded.model.config.to_dict()), str(loaded.path)
    from converters.torch_capture import capture_ir

    from ..passes.fold import fold_layernorm

    options["mappings"] = chip_mappings(fold_layernorm(capture_ir(loaded.model)),
                                        chip_profiles(chips), policy,
                                        options.get("graded_bits", 8))
    del loaded   # the workers open their own copies
    from ..distributed import ModelSource

    source = ModelSource(path, None if tokenizer_path is None else str(tokenizer_path),
                         tuple(sorted((overrides or {}).items())))
    return _profile_distributed(source, config, ids[:tokens], chip_profiles(chips),
                                policy, cluster, host_profile=host, ann_profiles=anns,
                                meta=meta, **options)


def _profile_distributed(source: Any, config: Mapping[str, Any], ids: np.ndarray,
                         chips: list[HardwareProfile], policy: str, cluster: Any, *,
                         window: int, graded_bits: int = 8, **price_options: Any
                         ) -> ProfileResult:
    """The windows of ``ids`` in consecutive shards on Ray, counted by ``profile_shard``,
    merged exactly and priced once."""
    from ..distributed import ray_cluster, run_shards, split_shards
    from .merge import merge_targets
    from .windows import profile_shard

    windows = split_windows(ids, window)
    with ray_cluster(cluster) as slots:
        shards = split_shards(len(windows), slots)
        args = [(source, windows[r.start:r.stop], chips, policy, graded_bits) for r in shards]
        parts = run_shards(profile_shard, args, lambda i: (
            f"shard {i + 1} of {len(shards)} (windows {shards[i].start}-{shards[i].stop - 1} "
            f"of {window} tokens)"))
    result = assemble_result(config, chips, merge_targets(parts), policy,
                             graded_bits=graded_bits, window=window, **price_options)
    result.meta["distributed"] = {"shards": len(shards), "slots": slots,
                                  "address": cluster.address, "workers": cluster.workers}
    return result


def profile_bundle(bundle_path: str | Path, data: str, tokens: int, precision: str = "fixed",
                   *, host_profile: str | None = None, split: str = "valid",
                   timesteps: float | None = None, hops: float | None = None,
                   sensitivity_factor: float = 2.0, timeout_s: float | None = None,
                   host_timing: str | Path | HardwareProfile = "cpu") -> ProfileResult:
    """Profile a deployment bundle from spikes recorded in the Lava simulation.

    The bundle's own partitioned, quantized IR is counted with ``count_ops`` on the spikes that
    ``simulation.simulate`` recorded while it was fed the first ``tokens`` tokens of the split,
    and priced on the bundle's target. Static energy uses the simulator's measured timesteps per
    token unless ``timesteps`` is given.
    """
    from ..bundle import bundle_profile, load_bundle
    from ..data import encode_split, load_corpus
    from ..simulation import simulate

    _check_tokens(tokens)
    bundle = load_bundle(bundle_path)
    chip = bundle_profile(bundle.path, bundle.manifest)
    if bundle.tokenizer is None:
        raise DataError(f"{bundle_path}: the bundle has no tokenizer.json; it cannot read {data}")
    corpus = load_corpus(data)
    ids = encode_split(bundle.tokenizer, corpus, split)[:tokens]
    if len(ids) < tokens:
        raise DataError(f"the {split} split of {data} has {len(ids)} tokens, fewer than "
                        f"--tokens {tokens}")
    run = simulate(bundle_path, [int(t) for t in ids], 0, precision, timeout_s=timeout_s)
    policy = bundle.ir.meta.get("partition", {}).get("policy", "spikes")
    graded = graded_input_trace(bundle.ir, ids) if policy == "graded" else None
    counts = count_ops(bundle.ir, run.spikes, graded)
    steps = float(run.timesteps_per_token) if timesteps is None else timesteps
    host = load_host(chip, host_profile)
    prices = {chip.name: price_target(counts, chip, host, steps, hops, sensitivity_factor,
                                      resources=core_mapping(bundle.ir, chip),
                                      host_timing=_as_profile(host_timing))}
    ann = {p.name: price_ann(counts.ann, p) for p in map(_as_profile, DEFAULT_ANN_PROFILES)}
    paper = paper_formula(counts, prices)
    info = {"model_config": dict(bundle.ir.config), "tokens": int(len(ids)), "policy": policy,
            "targets": [chip.name], "host_profile": host_profile, "timesteps": steps,
            "hops": hops, "sensitivity_factor": sensitivity_factor,
            "host_timing": str(getattr(host_timing, "name", host_timing)),
            "recording": f"lava-{precision}", "bundle": str(bundle_path),
            "model": f"{bundle_path} (bundle, Lava {precision})",
            "model_sha256": bundle.manifest["source_model"]["sha256"], "data": data,
            "data_sha256": corpus.sha256, "split": split,
            "simulation": {"timesteps_per_token": run.timesteps_per_token,
                           "wall_s": run.wall_s, "processes": run.processes}}
    return ProfileResult(info, {chip.name: counts}, prices, ann, paper)
