"""The ``spikegpt-deploy`` command line: thin click wrappers over ``api`` functions.

Every DeployError is printed as one ``error: ...`` line and exits with code 1, without a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from .errors import DeployError


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DeployError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def main(verbose: bool) -> None:
    """spikegpt-deploy: convert, simulate and profile SpikeGPT for neuromorphic hardware."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False),
                      help="tokenizers JSON for a bare .pth state_dict (e.g. 20B_tokenizer.json).")(fn)
    fn = click.option("--binary-embedding/--float-embedding", default=None,
                      help="Override the Heaviside embedding setting.")(fn)
    fn = click.option("--rescale-every", type=int, default=None,
                      help="Reference RNN rescaling: halve every K layers (0 = off).")(fn)
    return fn


def _overrides(binary_embedding: bool | None, rescale_every: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if binary_embedding is not None:
        out["binary_embedding"] = binary_embedding
    if rescale_every is not None:
        out["rescale_every"] = rescale_every
    return out


@main.command()
@click.option("--data", default="kjv", show_default=True, help="'kjv' or a UTF-8 text file.")
@click.option("--out", default="model.pt", show_default=True, type=click.Path(dir_okay=False))
@click.option("--layers", default=4, show_default=True, type=int)
@click.option("--width", default=128, show_default=True, type=int)
@click.option("--ctx-len", default=128, show_default=True, type=int)
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--steps", default=2000, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--lr-final", default=1e-4, show_default=True, type=float)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--eval-every", default=250, show_default=True, type=int)
@click.option("--eval-tokens", default=32768, show_default=True, type=int)
@click.option("--checkpoint-every", default=250, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, type=int,
              help="CPU threads for torch (0 = torch's default).")
@click.option("--resume", is_flag=True, help="Continue from <out>.ckpt.")
@_handle_errors
def train(resume: bool, **kwargs: Any) -> None:
    """Train a char-level SpikeGPT on CPU and write MODEL.pt."""
    from tqdm import tqdm

    from .training import TrainOptions, train as run_training

    opts = TrainOptions(**kwargs)
    bars: list[Any] = []  # made at the first step, so an early error prints no empty bar
    last_bpc: list[float] = []

    def progress(p: Any) -> None:
        if not bars:
            bars.append(tqdm(total=opts.steps, initial=p.step - 1, unit="step",
                             dynamic_ncols=True, mininterval=1.0))
        bar = bars[0]
        if p.valid_bpc is not None:
            last_bpc.append(p.valid_bpc)
            bar.write(f"step {p.step}: validation {p.valid_bpc:.4f} bits/char")
        bar.set_postfix(loss=f"{p.loss:.3f}", tok_s=f"{p.tokens_per_s:.0f}",
                        val_bpc=f"{last_bpc[-1]:.3f}" if last_bpc else "-", refresh=False)
        bar.update(1)

    try:
        meta = run_training(opts, progress, resume=resume)
    finally:
        for bar in bars:
            bar.close()
    click.echo(f"wrote {opts.out}: validation {meta['valid_bpc']:.4f} bits/char on "
               f"{meta['valid_tokens']} tokens, {meta['train_seconds']:.0f} s of training")


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--data", default="kjv", show_default=True)
@click.option("--split", default="valid", show_default=True,
              type=click.Choice(["train", "valid", "test"]))
@click.option("--max-tokens", type=int, default=None, help="Evaluate only the first N tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_model_options
@_handle_errors
def evaluate(model: str | None, data: str, split: str, max_tokens: int | None, as_json: bool,
             tokenizer_path: str | None, binary_embedding: bool | None,
             rescale_every: int | None) -> None:
    """Bits per character and firing rate per LIF population on held-out text."""
    from . import api

    loaded = api.open_model(model, tokenizer_path, **_overrides(binary_embedding, rescale_every))
    result = api.evaluate(loaded, data, split, max_tokens)
    if as_json:
        click.echo(json.dumps({"model": str(loaded.path), "model_sha256": loaded.sha256,
                               "data": data, "split": split, **result.to_dict()}, indent=2))
        return
    click.echo(f"{loaded.path.name} on {data} ({split}, {result.tokens} tokens): "
               f"{result.bits_per_token:.4f} bits per token")
    if result.firing_rates:
        click.echo("firing rate per population:")
        for name, rate in result.firing_rates.items():
            click.echo(f"  {name:<18} {rate:.4f}")


@main.command()
@click.option("--model", "model", type=click.Path(dir_okay=False), default=None,
              help="Model file (default: the shipped example model).")
@click.option("--prompt", required=True)
@click.option("--tokens", "n_tokens", default=200, show_default=True, type=int)
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="0 = greedy decoding.")
@click.option("--top-p", default=0.9, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@_model_options
@_handle_errors
def generate(model: str | None, prompt: str, n_tokens: int, temperature: float, top_p: float,
             seed: int, tokenizer_path: str | None, binary_embedding: bool | None,
             rescale_every: int | None) -> None:
    """Stream generated text from PROMPT (RNN mode)."""
    from . import api
    from .sampling import SamplingOptions

    loaded = api.open_model(model, tokenizer_path, **_overrides(binary_embedding, rescale_every))
    click.echo(prompt, nl=False)
    for piece in api.generate(loaded, prompt, n_tokens, SamplingOptions(temperature, top_p, seed)):
        click.echo(piece, nl=False)
    click.echo()


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--target", default="loihi2", show_default=True,
              help="Chip profile name (see 'targets') or a profile TOML file.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Bundle directory (default: <model>.<target>.bundle next to the model).")
@click.option("--policy", type=click.Choice(["spikes", "graded"]), default="spikes",
              show_default=True)
@click.option("--weight-bits", default=8, show_default=True, type=int)
@click.option("--graded-bits", default=8, show_default=True, type=int)
@click.option("--calibration", default=None,
              help="'kjv' or a text file for calibrating fixed-point ranges (default: seeded "
                   "random tokens).")
@click.option("--calibration-tokens", default=256, show_default=True, type=int)
@click.option("--check-tokens", default=128, show_default=True, type=int,
              help="Tokens of the equivalence check (taken from the calibration tokens).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_model_options
@_handle_errors
def convert(model: str | None, target: str, out_dir: str | None, policy: str, weight_bits: int,
            graded_bits: int, calibration: str | None, calibration_tokens: int,
            check_tokens: int, force: bool,
            as_json: bool, tokenizer_path: str | None, binary_embedding: bool | None,
            rescale_every: int | None) -> None:
    """Convert MODEL (.pt, official .pth or exported .onnx) into a deployment bundle."""
    from . import api

    path, manifest = api.convert(
        model, out_dir, force=force, target=target, policy=policy, weight_bits=weight_bits,
        graded_bits=graded_bits, calibration=calibration, calibration_tokens=calibration_tokens,
        check_tokens=check_tokens,
        tokenizer=tokenizer_path, overrides=_overrides(binary_embedding, rescale_every))
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    eq = manifest.get("equivalence") or {}
    part = manifest["partition"]
    click.echo(f"wrote {path}")
    click.echo(f"  target {manifest['target']['name']}, policy {manifest['policy'].get('policy')}, "
               f"passes: {' -> '.join(manifest['passes'])}")
    for place, s in sorted(part.items()):
        click.echo(f"  {place:<8} {s['nodes']:>5} nodes {s['parameters']:>10,} parameters")
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


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_handle_errors
def inspect(bundle: str, as_json: bool) -> None:
    """Summarise BUNDLE: partition, chip-host crossings, resources, quantization error."""
    from . import api

    info = api.inspect_bundle(bundle)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    try:
        _render_inspect(info)
    except (KeyError, TypeError, ValueError) as exc:  # manifest.json itself is not hashed
        from .errors import BundleError
        raise BundleError(f"{bundle}/manifest.json: malformed manifest ({type(exc).__name__}: "
                          f"{exc}); re-run convert") from None


def _render_inspect(info: dict[str, Any]) -> None:
    cfg = info["config"]
    click.echo(f"{info['bundle']}: {cfg['n_layer']} layers x {cfg['n_embd']}, vocab "
               f"{cfg['vocab_size']}, target {info['target']['name']}, policy "
               f"{info['policy'].get('policy')}")
    click.echo("partition (nodes / parameters / ops):")
    for place, s in sorted(info["partition"].items()):
        ops = ", ".join(f"{k} {v}" for k, v in sorted(s["ops"].items()))
        click.echo(f"  {place:<8} {s['nodes']:>5} / {s['parameters']:>10,}  {ops}")
    click.echo(f"spike-driven linears: {len(info['spike_driven_linears'])}")
    click.echo("chip-host crossings per token (upper bound: every element sent):")
    for direction, d in sorted(info["crossings_per_token"].items()):
        click.echo(f"  {direction:<13} {d['values']:>4} values, <= {d['max_messages']:,} messages, "
                   f"<= {d['max_bytes']:,.0f} bytes")
    totals = info["resources"]["totals"]
    click.echo(f"resources: {totals['cores']} cores, {totals['chips']} chip(s), "
               f"{totals['neurons']:,} neurons, {totals['synapses']:,} synapses, "
               f"{totals['synaptic_memory_bytes']:,} B synaptic memory")
    click.echo("quantization (weights, per layer: max / rms error):")
    for name, q in sorted(info["quantization"].items()):
        if "weight_max_abs_error" in q:
            click.echo(f"  {name:<40} {q['weight_max_abs_error']:.2e} / {q['weight_rms_error']:.2e}")
        else:
            click.echo(f"  {name:<40} LIF input step 2^-{q['input_scale_bits']} "
                       f"(peak |x| {q['input_peak']:.3g})")


@main.command(name="profile")
@click.argument("model", required=False, type=click.Path())
@click.option("--data", default="kjv", show_default=True, help="'kjv' or a UTF-8 text file.")
@click.option("--tokens", "n_tokens", default=256, show_default=True, type=int,
              help="Profile the first N tokens of the held-out (valid) split.")
@click.option("--target", "targets", multiple=True, default=("loihi2",), show_default=True,
              help="Chip profile name or TOML (repeatable); the IR is partitioned for each.")
@click.option("--host-profile", default=None,
              help="Profile (name or TOML) pricing host ops (default: each target's default_host).")
@click.option("--profile", "user_profiles", multiple=True, type=click.Path(dir_okay=False),
              help="Your own profile TOML (repeatable): chip adds a target, host prices host "
                   "ops, ann adds a baseline.")
@click.option("--policy", default="spikes", show_default=True,
              type=click.Choice(["spikes", "graded"]))
@click.option("--timesteps", type=float, default=None,
              help="Chip timesteps per token (default: the IR's pipeline depth).")
@click.option("--hops", type=float, default=None,
              help="Mesh hops per spike message (default: mean distance on the mapped mesh).")
@click.option("--sensitivity-factor", default=2.0, show_default=True, type=float)
@click.option("--precision", type=click.Choice(["float", "fixed"]), default="fixed",
              show_default=True, help="For a bundle: the Lava precision of the recording run.")
@click.option("-o", "--out", "out_dir", default="profile", show_default=True,
              type=click.Path(file_okay=False), help="Folder for profile.json and the CSV files.")
@_handle_errors
def profile_cmd(model: str | None, data: str, n_tokens: int, targets: tuple[str, ...],
                host_profile: str | None, user_profiles: tuple[str, ...], policy: str,
                timesteps: float | None, hops: float | None, sensitivity_factor: float,
                precision: str, out_dir: str) -> None:
    """Count spikes, synaptic/host ops and chip-host traffic; price them per target.

    MODEL is a model file (spikes recorded in PyTorch, fast) or a bundle directory (spikes
    recorded in the Lava simulation of the bundle, priced on the bundle's target)."""
    from pathlib import Path

    from .profiling import profile_bundle, profile_checkpoint
    from .profiling.report import render_table, write_outputs

    if model is not None and Path(model).is_dir():
        from .errors import DataError
        if user_profiles or targets != ("loihi2",) or policy != "spikes":
            raise DataError("a bundle is profiled on the target and policy it was converted "
                            "for; --target, --policy and --profile apply to model files")
        result = profile_bundle(model, data, n_tokens, precision, host_profile=host_profile,
                                timesteps=timesteps, hops=hops,
                                sensitivity_factor=sensitivity_factor)
    else:
        result = profile_checkpoint(model, data, n_tokens, targets, host_profile,
                                    user_profiles, policy, timesteps=timesteps, hops=hops,
                                    sensitivity_factor=sensitivity_factor)
    click.echo(render_table(result))
    paths = write_outputs(result, out_dir)
    click.echo(f"\nwrote {', '.join(str(p) for p in paths)}")


@main.command(name="report")
@click.argument("profile_json", type=click.Path(dir_okay=False))
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML report with plots here.")
@_handle_errors
def report_cmd(profile_json: str, html_path: str | None) -> None:
    """Print the tables of a profile.json (and write an HTML report with --html)."""
    from .profiling.report import load_json, render_table

    result = load_json(profile_json)
    click.echo(render_table(result))
    if html_path:
        from .profiling.html import write_html

        click.echo(f"\nwrote {write_html(result, html_path)}")


@main.command(name="targets")
@_handle_errors
def targets_cmd() -> None:
    """List the built-in hardware profiles: role, title and the sources of their figures."""
    from hw_profiles import list_profiles, load_profile

    for name in list_profiles():
        prof = load_profile(name)
        kinds: dict[str, int] = {}
        sources: dict[str, int] = {}
        for _, _, q in prof.quantities():
            kinds[q.kind] = kinds.get(q.kind, 0) + 1
            sources[q.source] = sources.get(q.source, 0) + 1
        host = f", host ops on {prof.default_host}" if prof.default_host else ""
        click.echo(f"{name:<12} {prof.role:<5} {prof.title}{host}")
        click.echo("             figures: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        for source, n in sorted(sources.items(), key=lambda kv: -kv[1]):
            click.echo(f"             [{n:>2}] {source}")


@main.command("export-onnx")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the step .onnx.")
@_model_options
@_handle_errors
def export_onnx(model: str | None, out_path: str, tokenizer_path: str | None,
                binary_embedding: bool | None, rescale_every: int | None) -> None:
    """Export MODEL's per-token step (tokens, state -> logits, next state) as ONNX."""
    from converters.onnx_export import export_step_onnx

    from . import api

    loaded = api.open_model(model, tokenizer_path, **_overrides(binary_embedding, rescale_every))
    path = export_step_onnx(loaded.model, out_path)
    click.echo(f"wrote {path} (inputs: tokens [B] int64, state [7, {loaded.model.config.n_layer},"
               f" B, {loaded.model.config.n_embd}] float32; outputs: logits, next_state)")


@main.command(name="simulate")
@click.argument("bundle", type=click.Path())
@click.option("--prompt", required=True)
@click.option("--tokens", "n_tokens", default=64, show_default=True, type=int)
@click.option("--precision", type=click.Choice(["float", "fixed"]), default="float",
              show_default=True, help="Lava floating_pt models, or bit-accurate fixed_pt.")
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="0 = greedy decoding.")
@click.option("--top-p", default=0.9, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--host-layout", type=click.Choice(["single", "layers"]), default="single",
              show_default=True, help="One host process, or one per layer (emb, blocks.N, head).")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Stop the simulation after this many seconds (default: scales with length).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_handle_errors
def simulate_cmd(bundle: str, prompt: str, n_tokens: int, precision: str, temperature: float,
                 top_p: float, seed: int, host_layout: str, timeout_s: float | None,
                 as_json: bool) -> None:
    """Generate text from PROMPT with BUNDLE simulated in Lava (chip and host processes)."""
    from .errors import SimulationError
    from .sampling import SamplingOptions
    from .simulation import simulate_text

    first: list[float] = []

    def on_text(i: int, piece: str, seconds: float) -> None:
        if not as_json:  # the prompt goes out with the first token: nothing before an error
            click.echo((prompt if i == 0 else "") + piece, nl=False)
            sys.stdout.flush()
        first.append(seconds)
        rate = f"{i / (seconds - first[0]):.1f}" if i and seconds > first[0] else "-"
        click.echo(f"\r[{i + 1}/{n_tokens} tokens, {rate} tok/s]", err=True, nl=False)

    try:
        result, text, eq = simulate_text(bundle, prompt, n_tokens, precision,
                                         SamplingOptions(temperature, top_p, seed),
                                         timeout_s=timeout_s, host_layout=host_layout,
                                         on_text=on_text)
    except SimulationError as exc:  # keep the simulator's traceback for -v, one line here
        logging.getLogger(__name__).info("%s", exc)
        raise SimulationError(str(exc).splitlines()[0]) from None
    finally:
        if first:
            click.echo("", err=True)
    if as_json:
        click.echo(json.dumps({"text": text, "prompt": prompt, **result.summary(),
                               "equivalence": eq}, indent=2))
        return
    click.echo("" if first else prompt)
    click.echo(f"{len(result.token_ids)} tokens in Lava {precision}: "
               f"{result.timesteps_per_token} timesteps per token, {result.tokens_per_s:.1f} "
               f"tokens/s ({result.step_ms:.2f} ms per timestep, {sum(result.processes.values())}"
               f" processes); vs {eq['reference']}: max |dlogit| {eq['max_abs_logit_diff']:.2e}, "
               f"spikes identical {eq['spikes_identical']}, tokens identical "
               f"{eq['generated_tokens_identical']}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
