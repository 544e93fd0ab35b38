"""Commands on deployment bundles: convert, inspect, export, simulate."""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import click

from .common import (echo_json, handle_errors, json_option, model_options, overrides,
                     quiet_option, show_progress)


@click.command()
@click.argument("model", required=False, type=click.Path())
@click.option("--target", default="loihi2", show_default=True,
              help="Chip profile name (see 'targets') or a profile TOML file (copied into the "
                   "bundle).")
@click.option("-o", "--out", "out_dir", type=click.Path(), default=None,
              help="Bundle directory (default: <model>.<target>.bundle next to the model).")
@click.option("--policy", type=click.Choice(["spikes", "graded"]), default="spikes",
              show_default=True)
@click.option("--weight-bits", default=8, show_default=True, type=int,
              help="Chip weight bits (2..8) of every chip linear.")
@click.option("--quality-budget", type=float, default=None,
              help="Pick the bits of each chip linear (2..8) for the fewest cores within this "
                   "quantization cost in bits per token on the --calibration text.")
@click.option("--scales", type=click.Choice(["channel", "layer"]), default="channel",
              show_default=True, help="SpikeLinear weight scales: one per output channel (read "
                                      "by the host) or one power of two per layer.")
@click.option("--rounding", type=click.Choice(["auto", "gptq", "nearest"]), default="auto",
              show_default=True, help="SpikeLinear rounding: error-compensating (GPTQ, on the "
                                      "calibration inputs), to nearest, or auto: GPTQ below 8 "
                                      "bits, nearest at 8.")
@click.option("--graded-bits", default=8, show_default=True, type=int)
@click.option("--calibration", default=None,
              help="'kjv' or a text file for calibrating fixed-point ranges (default: seeded "
                   "random tokens).")
@click.option("--calibration-tokens", default=128, show_default=True, type=int,
              help="Tokens whose float run sets the fixed-point ranges (the check reuses it).")
@click.option("--check-tokens", default=128, show_default=True, type=int,
              help="Tokens of the equivalence check (taken from the calibration tokens).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@json_option
@model_options
@handle_errors
def convert(model: str | None, target: str, out_dir: str | None, policy: str, weight_bits: int,
            quality_budget: float | None, scales: str, rounding: str, graded_bits: int, calibration: str | None, calibration_tokens: int,
            check_tokens: int, force: bool, as_json: bool, tokenizer_path: str | None,
            binary_embedding: bool | None, rescale_every: int | None) -> None:
    """Convert MODEL (.pt, official .pth or exported .onnx) into a deployment bundle."""
    from .. import api

    path, manifest = api.convert(
        model, out_dir, force=force, target=target, policy=policy, weight_bits=weight_bits,
        quality_budget=quality_budget, scales=scales, rounding=rounding,
        graded_bits=graded_bits, calibration=calibration, calibration_tokens=calibration_tokens,
        check_tokens=check_tokens, tokenizer=tokenizer_path,
        overrides=overrides(binary_embedding, rescale_every))
    if as_json:
        echo_json(manifest)
        return
    eq = manifest.get("equivalence") or {}
    click.echo(f"wrote {path}")
    click.echo(f"  target {manifest['target']['name']}, policy {manifest['policy'].get('policy')}, "
               f"passes: {' -> '.join(manifest['passes'])}")
    for place, s in sorted(manifest["partition"].items()):
        click.echo(f"  {place:<8} {s['nodes']:>5} nodes {s['parameters']:>10,} parameters")
    budget = manifest.get("quantization", {}).get("budget")
    if budget:
        counts: dict[int, int] = {}
        for b in budget["bits"].values():
            counts[b] = counts.get(b, 0) + 1
        click.echo(f"  quality budget {budget['budget_bits_per_token']} bits/token: chip linears "
                   "at " + ", ".join(f"{b} bits x{c}" for b, c in sorted(counts.items()))
                   + f"; measured cost {budget['measured_cost_bits_per_token']:+.4f} on "
                   f"{budget['calibration_tokens']} calibration tokens")
    totals = manifest["resources"]["totals"]
    click.echo(f"  chip resources: {totals['cores']} cores on {totals['chips']} chip(s), "
               f"{totals['neurons']:,} neurons, {totals['synapses']:,} synapses")
    if eq:
        click.echo(f"  check over {eq['tokens']} tokens: float IR vs PyTorch max |dlogit| "
                   f"{eq['float_ir_vs_pytorch_max_abs_logit_diff']:.2e}, spikes identical: "
                   f"{eq['float_ir_spikes_identical']}; quantized greedy-token agreement "
                   f"{eq['quantized_greedy_token_agreement']:.3f}")
        if eq.get("float_bits_per_token") is not None:
            click.echo(f"  bits per token on the check tokens ({eq['check_tokens_source']}): "
                       f"float {eq['float_bits_per_token']:.3f}, quantized "
                       f"{eq['quantized_bits_per_token']:.3f}")


@click.command()
@click.argument("bundle", type=click.Path())
@json_option
@handle_errors
def inspect(bundle: str, as_json: bool) -> None:
    """Summarise BUNDLE: partition, chip-host crossings, resources, quantization error."""
    from .. import api

    info = api.inspect_bundle(bundle)
    if as_json:
        echo_json(info)
        return
    try:
        lines = _inspect_lines(info)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # manifest.json is unhashed
        from ..errors import BundleError
        raise BundleError(f"{bundle}/manifest.json: malformed manifest ({type(exc).__name__}: "
                          f"{exc}); re-run convert") from None
    click.echo("\n".join(lines))


def _inspect_lines(info: dict[str, Any]) -> list[str]:
    cfg = info["config"]
    prof = info["target_profile"]
    out = [f"{info['bundle']}: {cfg['n_layer']} layers x {cfg['n_embd']}, vocab "
           f"{cfg['vocab_size']}, target {info['target']['name']}, policy "
           f"{info['policy'].get('policy')}",
           f"target profile: {prof['title']} ({prof['path']}, sha256 {prof['sha256'][:12]})",
           "partition (nodes / parameters / ops):"]
    for place, s in sorted(info["partition"].items()):
        ops = ", ".join(f"{k} {v}" for k, v in sorted(s["ops"].items()))
        out.append(f"  {place:<8} {s['nodes']:>5} / {s['parameters']:>10,}  {ops}")
    out.append(f"spike-driven linears: {len(info['spike_driven_linears'])}")
    out.append("chip-host crossings per token (upper bound: every element sent):")
    for direction, d in sorted(info["crossings_per_token"].items()):
        out.append(f"  {direction:<13} {d['values']:>4} values, <= {d['max_messages']:,} "
                   f"messages, <= {d['max_bytes']:,.0f} bytes")
    totals = info["resources"]["totals"]
    out.append(f"resources: {totals['cores']} cores, {totals['chips']} chip(s), "
               f"{totals['neurons']:,} neurons, {totals['synapses']:,} synapses, "
               f"{totals['synaptic_memory_bytes']:,} B synaptic memory")
    if info.get("chip_weights"):
        out += _chip_weight_lines(info["chip_weights"])
    method = info.get("quantization_method") or {}
    out.append(f"quantization: scales {method.get('scales') or 'layer'}, rounding "
               f"{method.get('rounding') or 'nearest'}, calibrated on "
               f"{method.get('calibration_tokens')} tokens")
    budget = info.get("quality_budget")
    if budget:
        out.append(f"  quality budget {budget['budget_bits_per_token']} bits/token: measured cost "
                   f"{budget['measured_cost_bits_per_token']:+.4f} on the calibration text "
                   f"({budget['calibration_tokens']} tokens; all 8-bit: "
                   f"{budget['all8_cost_bits_per_token']:+.4f})")
    out.append("  per layer: bits, cores, synaptic memory, predicted cost (budget), weight "
               "max / rms error")
    for name, q in sorted(info["quantization"].items()):
        if "weight_max_abs_error" in q:
            cost = q.get("predicted_cost")
            out.append(f"  {name:<40} {q.get('weight_bits', '?'):>2} bit {q.get('cores', '?'):>4} "
                       f"cores {q.get('synaptic_memory_bytes', 0):>9,} B "
                       f"{'' if cost is None else f'{cost:+.4f} '}"
                       f"{q['weight_max_abs_error']:.2e} / {q['weight_rms_error']:.2e}")
        else:
            out.append(f"  {name:<40} LIF input step 2^-{q['input_scale_bits']} "
                       f"(peak |x| {q['input_peak']:.3g})")
    return out


def _chip_weight_lines(cw: dict[str, Any]) -> list[str]:
    model = cw.get("model_parameters")
    out = [f"chip weights: {cw['chip_weight_values']:,} values"
           + (f" for a model of {model:,} parameters" if model else "")
           + f"; the linears on the chip hold {cw['model_values_of_these_linears']:,} of them "
           f"in the model"]
    out += textwrap.wrap(cw["why"], width=96, initial_indent="  ", subsequent_indent="  ")
    out.append("  model linear (out x in) -> chip matrices (rows x in, from which spikes) = factor:")
    for module, e in cw["per_linear"].items():
        mats = " + ".join(f"{m['shape'][0]} x {m['shape'][1]} ({m['input']})"
                          for m in e["matrices"])
        shape = " x ".join(str(v) for v in e["model_shape"])
        out.append(f"    {module:<24} {shape:>11} -> {mats} = {e['factor']:.0f}x")
    return out


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--format", "fmt", required=True, type=click.Choice(["onnx", "nir", "netx"]),
              help="onnx: the host partition (host.onnx); nir: the spiking partition "
                   "(spiking.nir); netx: the chip layers lava-dl netx expresses (a folder of "
                   "chip.<layer>.net files).")
@click.option("-o", "--out", "out", type=click.Path(), default=None,
              help="Output file (folder for netx); default: next to the bundle, "
                   "<bundle>.host.onnx, <bundle>.spiking.nir or <bundle>.netx.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@handle_errors
def export(bundle: str, fmt: str, out: str | None, force: bool) -> None:
    """Write BUNDLE in an interop format (ONNX, NIR, lava-dl netx), from the bundle's IR."""
    from .. import api

    path, info = api.export_bundle(bundle, fmt, out, force)
    files = info.get("files") or [info.get("file")]
    click.echo(f"wrote {path}" + (f" ({', '.join(files)})" if fmt == "netx" else ""))


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--prompt", required=True)
@click.option("--tokens", "n_tokens", default=64, show_default=True, type=int)
@click.option("--precision", type=click.Choice(["float", "fixed"]), default="float",
              show_default=True, help="Lava floating_pt models, or bit-accurate fixed_pt.")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="0 = greedy decoding.")
@click.option("--top-p", default=0.9, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--network", type=click.Choice(["pipelined", "populations"]), default=None,
              help="pipelined (default): one chip and one host process, the prompt fed one "
              "token per timestep; populations: a process per population, each token alone.")
@click.option("--host-layout", type=click.Choice(["single", "layers"]), default="single",
              show_default=True, help="Populations network: one host process, or one per layer "
              "(emb, blocks.N, head).")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Stop the simulation after this many seconds (default: scales with length).")
@json_option
@quiet_option
@handle_errors
def simulate(bundle: str, prompt: str, n_tokens: int, precision: str, temperature: float,
             top_p: float, seed: int, network: str | None, host_layout: str,
             timeout_s: float | None, as_json: bool, quiet: bool) -> None:
    """Generate text from PROMPT with BUNDLE simulated in Lava (chip and host processes)."""
    from .. import api
    from ..sampling import SamplingOptions

    progress = show_progress(quiet)
    first: list[float] = []

    def on_text(i: int, piece: str, seconds: float) -> None:
        if not as_json:  # the prompt goes out with the first token: nothing before an error
            click.echo((prompt if i == 0 else "") + piece, nl=False)
            sys.stdout.flush()
        first.append(seconds)
        if progress:
            rate = f"{i / (seconds - first[0]):.1f}" if i and seconds > first[0] else "-"
            click.echo(f"\r[{i + 1}/{n_tokens} tokens, {rate} tok/s]", err=True, nl=False)

    try:
        run = api.simulate(bundle, prompt, n_tokens, precision,
                           SamplingOptions(temperature, top_p, seed), timeout_s=timeout_s,
                           host_layout=host_layout, on_text=on_text, network=network)
    finally:
        if first and progress:
            click.echo("", err=True)
    if as_json:
        echo_json(run.to_dict(prompt))
        return
    result, eq = run.result, run.equivalence
    click.echo("" if first else prompt)
    pre = result.schedule.get("prefill")
    prefill = f"prompt {pre['timesteps_per_token']:g} timestep(s) per token, " if pre else ""
    click.echo(f"{len(result.token_ids)} tokens in Lava {precision}: {prefill}"
               f"{result.timesteps_per_token} timesteps per generated token, "
               f"{result.tokens_per_s:.1f} "
               f"tokens/s ({result.step_ms:.2f} ms per timestep, {sum(result.processes.values())}"
               f" processes); vs {eq['reference']}: max |dlogit| {eq['max_abs_logit_diff']:.2e}, "
               f"spikes identical {eq['spikes_identical']}, tokens identical "
               f"{eq['generated_tokens_identical']}", err=True)
