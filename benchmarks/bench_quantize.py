"""What chip weight precision costs: quality, synaptic memory and cores per --weight-bits.

    python benchmarks/bench_quantize.py [--bits 2,3,4,5,6,7,8] [--budget 0.05]
        [--max-tokens N] [--calibration-tokens 2048] [--no-layer-baseline]
        [--skip-216m] [--only-216m] [--mix FILE] [--json FILE]

Shipped model (examples/spikegpt-kjv-4x128.pt), KJV: converted up to map_resources with
calibration on the start of the training split (``--calibration kjv``), per-channel scales and
rounding 'auto' (the defaults: GPTQ below 8 bits, nearest at 8; 8 bits with GPTQ is measured
too), at each --weight-bits and with ``--quality-budget``; each bundle
IR's quantized fixed-point emulation is evaluated on the validation split (all of it unless
--max-tokens) as ``evaluate BUNDLE --precision fixed`` does, against the float IR on the same
tokens (the float IR equals the PyTorch model to 1e-4 bits per token, tests/test_bundle_evaluation
.py). The previous quantizer (one power-of-two scale per layer, round to nearest) is measured
beside it at 4, 6 and 8 bits. Printed per row: bits/char, cost, greedy agreement with the float
IR, synaptic memory and cores; for the budget also the cost it measured on its calibration text.

216M shape (18 x 768, vocab 50277, random weights in the official layout; run it under
``flock /tmp/spikegpt-216m.lock``): cores and chips at 8, 6, 4 bits and with the shipped model's
budgeted bits mapped onto it by role and relative depth (with random weights a measured cost
would mean nothing, so no budget is planned on them). The cores depend on the bits and on how
many weights stay non-zero, counted with per-row scales
max|w| / qmax and round to nearest (the clipping search and GPTQ change few of them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spikegpt_deploy.api import default_model_path  # noqa: E402
from spikegpt_deploy.bundle_evaluation import evaluate_ir, windows_of  # noqa: E402
from spikegpt_deploy.convert import ConvertOptions, run_pipeline  # noqa: E402
from spikegpt_deploy.data import encode_split, load_corpus  # noqa: E402
from spikegpt_deploy.folded import linear_weight  # noqa: E402
from spikegpt_deploy.ir import HOST  # noqa: E402


def _agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean(np.concatenate([x.ravel() for x in a])
                         == np.concatenate([x.ravel() for x in b])))


def shipped(args: argparse.Namespace) -> list[dict]:
    model = default_model_path()
    base = dict(calibration="kjv", calibration_tokens=args.calibration_tokens, check_tokens=16)
    configs: list[tuple[str, dict]] = []
    for bits in args.bits:
        configs.append((f"{bits}", {"weight_bits": bits}))
        if bits == 8:  # the default rounds 8-bit weights to nearest: what GPTQ would add there
            configs.append(("8 (GPTQ)", {"weight_bits": 8, "rounding": "gptq"}))
    for bits in (8, 6, 4) if args.layer_baseline else ():
        configs.append((f"{bits} (per-layer 2^e, nearest)",
                        {"weight_bits": bits, "scales": "layer", "rounding": "nearest"}))
    if args.budget:
        configs.append((f"budget {args.budget}", {"quality_budget": args.budget}))
    ref_ctx = run_pipeline(model, ConvertOptions(**base), stop_after="partition")
    ids = encode_split(ref_ctx.tokenizer, load_corpus("kjv"), "valid")
    x, y = windows_of(ids, int(ref_ctx.ir.config["ctx_len"]), args.max_tokens)
    ref, ref_s = evaluate_ir(ref_ctx.ir, "float", x, y)
    print(f"shipped model, validation split: {ref.tokens} tokens; float IR {ref.bits_per_token:.4f} "
          f"bits/char ({ref.tokens / ref_s:,.0f} tokens/s)", flush=True)
    rows = []
    for name, extra in configs:
        t0 = time.perf_counter()
        ctx = run_pipeline(model, ConvertOptions(**base, **extra), stop_after="map_resources")
        convert_s = time.perf_counter() - t0
        tal, sec = evaluate_ir(ctx.ir, "fixed", x, y)
        totals = ctx.resources["totals"]
        lin = [r for r in ctx.resources["layers"] if r["op"] == "SpikeLinear"]
        row = {"weight_bits": name, "bits_per_char": tal.bits_per_token,
               "cost": tal.bits_per_token - ref.bits_per_token,
               "greedy_agreement": _agreement(tal.argmax, ref.argmax),
               "synaptic_memory_bytes": totals["synaptic_memory_bytes"],
               "linear_synaptic_memory_bytes": sum(r["synaptic_memory_bytes"] for r in lin),
               "cores": totals["cores"], "chips": totals["chips"], "tokens": tal.tokens,
               "convert_s": convert_s, "eval_tokens_per_s": tal.tokens / sec}
        plan = ctx.bit_plan
        if plan is not None:
            row["calibration_cost"] = plan.measured_cost_bits_per_token
            row["bits_per_layer"] = plan.bits
        rows.append(row)
        print(f"  {name:<28} {row['bits_per_char']:.4f} bits/char, cost {row['cost']:+.4f}, "
              f"agreement {row['greedy_agreement']:.3f}, synaptic memory "
              f"{row['synaptic_memory_bytes'] / 1e6:.2f} MB, {row['cores']} cores"
              + (f"; calibration-text cost {row['calibration_cost']:+.4f}, bits "
                 + ", ".join(f"{b}:{list(plan.bits.values()).count(b)}"
                             for b in sorted(set(plan.bits.values()))) if plan else "")
              + f"  (convert {convert_s:.0f} s, {row['eval_tokens_per_s']:,.0f} tokens/s)",
              flush=True)
    return rows


def _role(node: str) -> tuple[str, int | None]:
    m = re.match(r"blocks\.(\d+)\.(.*)", node)
    return (m.group(2), int(m.group(1))) if m else (node, None)


def _linear_fit(w: np.ndarray, bits: int, cap) -> tuple[int, int]:
    """Cores and synaptic memory of one chip linear at ``bits`` with per-row scales max|w| / qmax
    and round to nearest (a mantissa is non-zero where |w| > scale / 2), by blocks of rows."""
    qmax = 2 ** (bits - 1) - 1
    nonzero = 0
    for lo in range(0, w.shape[0], 4096):
        blk = np.abs(np.asarray(w[lo:lo + 4096], dtype=np.float32))
        half = blk.max(axis=1, keepdims=True) / (2 * qmax)
        nonzero += int(np.count_nonzero(blk > half))
    return cap.cores(w.shape[0], w.shape[1], nonzero, bits)[:2]


def big(mix: dict[str, int] | None) -> list[dict]:
    import torch

    from converters.torch_capture import capture_ir
    from hw_profiles import load_profile
    from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig
    from spikegpt_deploy.partition import partition
    from spikegpt_deploy.passes.fold import fold_layernorm
    from spikegpt_deploy.resources import Capacity, map_resources

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with torch.no_grad():
        model = SpikeGPT(SpikeGPTConfig(vocab_size=50277, n_layer=18, n_embd=768)).eval()
    profile = load_profile("loihi2")
    ir = partition(fold_layernorm(capture_ir(model)), profile, "spikes", 8)
    del model
    cap = Capacity.of(profile)
    res8 = map_resources(ir, profile, 8)
    other = sum(r["cores"] for r in res8["layers"] if r["op"] != "SpikeLinear")
    linears = [n for n in ir.topological() if ir.node(n)["op"] == "SpikeLinear"
               and ir.node(n).get("placement", HOST) != HOST]
    n_layer = int(ir.config["n_layer"])
    shipped_layers = 1 + max((_role(n)[1] or 0) for n in (mix or {"blocks.0.x": 8}))
    plans: list[tuple[str, dict[str, int]]] = [(f"{b}", {n: b for n in linears})
                                               for b in (8, 6, 4)]
    if mix:
        mapped = {}
        for n in linears:
            role, layer = _role(n)
            key = role if layer is None else \
                f"blocks.{layer * shipped_layers // n_layer}.{role}"
            mapped[n] = mix.get(key, 8)
        plans.append(("shipped budget mix by role and depth", mapped))
    cache: dict[tuple[str, int], tuple[int, int]] = {}
    rows = []
    for name, bits in plans:
        cores, memory = other, 0
        for n in linears:
            key = (n, bits[n])
            if key not in cache:
                cache[key] = _linear_fit(linear_weight(ir.node(n)["params"]), bits[n], cap)
            cores += cache[key][0]
            memory += cache[key][1]
        chips = -(-cores // cap.cores_per_chip)
        rows.append({"weight_bits": name, "cores": cores, "chips": chips,
                     "linear_synaptic_memory_bytes": memory})
        print(f"  {name:<40} {cores:>6,} cores on {chips:>3} chips, chip-linear synaptic memory "
              f"{memory / 1e6:,.0f} MB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", default="2,3,4,5,6,7,8")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--calibration-tokens", type=int, default=2048)
    ap.add_argument("--no-layer-baseline", dest="layer_baseline", action="store_false",
                    help="leave out the per-layer power-of-two, round-to-nearest rows")
    ap.add_argument("--skip-216m", action="store_true")
    ap.add_argument("--only-216m", action="store_true")
    ap.add_argument("--mix", default=None, help="JSON file of a previous run: its budget mix "
                                                "for the 216M part")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()
    args.bits = [int(b) for b in args.bits.split(",") if b]
    out: dict = {}
    if not args.only_216m:
        out["shipped"] = shipped(args)
    if not args.skip_216m:
        mix = next((r.get("bits_per_layer") for r in out.get("shipped", [])
                    if "bits_per_layer" in r), None)
        if mix is None and args.mix:
            mix = next((r["bits_per_layer"] for r in json.loads(Path(args.mix).read_text())
                        ["shipped"] if "bits_per_layer" in r), None)
        print("216M shape (18 x 768, vocab 50277), random weights, Loihi 2:", flush=True)
        out["216m"] = big(mix)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
