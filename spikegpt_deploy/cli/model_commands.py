"""Commands on model files: train, evaluate, generate, export-onnx."""

from __future__ import annotations

from typing import Any

import click

from .common import (cluster, cluster_options, echo_json, handle_errors, json_option,
                     model_options, overrides, quiet_option, show_progress)


@click.command()
@click.option("--data", default="kjv", show_default=True, help="'kjv' or a UTF-8 text file.")
@click.option("--out", default="model.pt", show_default=True, type=click.Path())
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
@quiet_option
@handle_errors
def train(resume: bool, quiet: bool, **kwargs: Any) -> None:
    """Train a char-level SpikeGPT on CPU and write MODEL.pt."""
    from .. import api
    from ..training import TrainOptions

    opts = TrainOptions(**kwargs)
    bars: list[Any] = []  # made at the first step, so an early error prints no empty bar
    last_bpc: list[float] = []

    def progress(p: Any) -> None:
        if not bars:
            from tqdm import tqdm
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
        meta = api.train(opts, progress if show_progress(quiet) else None, resume=resume)
    finally:
        for bar in bars:
            bar.close()
    click.echo(f"wrote {opts.out}: validation {meta['valid_bpc']:.4f} bits/char on "
               f"{meta['valid_tokens']} tokens, {meta['train_seconds']:.0f} s of training")


@click.command()
@click.argument("model", required=False, type=click.Path())
@click.option("--data", default="kjv", show_default=True)
@click.option("--split", default="valid", show_default=True,
              type=click.Choice(["train", "valid", "test"]))
@click.option("--max-tokens", type=int, default=None, help="Evaluate only the first N tokens.")
@click.option("--backend", type=click.Choice(["torch", "numpy", "lava"]), default=None,
              help="torch (MODEL, the default for a model file); numpy (BUNDLE, the default for "
                   "a bundle: its fixed-point emulation or float program); lava (BUNDLE in "
                   "Lava's simulator, pipelined; default 1024 tokens).")
@click.option("--precision", type=click.Choice(["float", "fixed"]), default="fixed",
              show_default=True, help="BUNDLE only: the quantized fixed-point computation or "
                                      "the partitioned float program.")
@click.option("--model", "source_model", type=click.Path(dir_okay=False), default=None,
              help="BUNDLE with numpy: the source model file to compare with (default: found "
                   "by the name and sha256 the bundle records).")
@json_option
@model_options
@cluster_options
@handle_errors
def evaluate(model: str | None, data: str, split: str, max_tokens: int | None,
             backend: str | None, precision: str, source_model: str | None, as_json: bool,
             tokenizer_path: str | None, binary_embedding: bool | None,
             rescale_every: int | None, workers: int | None, address: str | None) -> None:
    """Bits per token and firing rates on held-out text, of MODEL or of a converted BUNDLE."""
    import os
    from pathlib import Path

    from .. import api
    from ..errors import DataError

    if backend == "lava":
        if model is None:
            raise DataError("--backend lava evaluates a bundle: pass BUNDLE")
        ev = api.evaluate_bundle_lava(model, data, split, max_tokens, precision)
        if as_json:
            echo_json({"bundle": model, "data": data, "split": split, **ev.to_dict()})
            return
        click.echo(f"{model} in Lava ({precision}) on {data} ({split}, {ev.tokens} tokens): "
                   f"{ev.bits_per_token:.6f} bits per token; {ev.reference}: "
                   f"{ev.reference_bits_per_token:.6f}")
        click.echo(f"spikes identical: {ev.spikes_identical} (agreement "
                   f"{ev.spike_agreement:.6f}); max |dlogit| {ev.max_abs_logit_diff:.3g}; "
                   f"{ev.tokens_per_s:.1f} tokens/s, {ev.timesteps} timesteps")
        return
    is_bundle = model is not None and os.path.isdir(model) and (
        (Path(model) / "manifest.json").exists() or Path(model).suffix == ".bundle")
    if is_bundle and backend in (None, "numpy"):
        bundle_result = api.evaluate_bundle(model, data, precision, split, max_tokens,
                                            model=source_model, backend="numpy")
        if as_json:
            echo_json(bundle_result.to_dict())
        else:
            click.echo("\n".join(_bundle_eval_lines(bundle_result)))
        return
    if model is not None and os.path.isdir(model):
        raise DataError(f"{model} is a folder (a bundle?); evaluate a bundle (a folder with "
                        "manifest.json) with --backend numpy or lava, a model file with torch")
    if backend == "numpy":
        raise DataError("--backend numpy evaluates a bundle: pass BUNDLE")
    options = overrides(binary_embedding, rescale_every)
    runs_on = cluster(workers, address)
    loaded = api.open_model(model, tokenizer_path, **options)
    result = api.evaluate(loaded, data, split, max_tokens, cluster=runs_on,
                          source=api.model_source(loaded, tokenizer_path, options))
    if as_json:
        echo_json({"model": str(loaded.path), "model_sha256": loaded.sha256, "data": data,
                   "split": split, **result.to_dict()})
        return
    click.echo(f"{loaded.path.name} on {data} ({split}, {result.tokens} tokens): "
               f"{result.bits_per_token:.4f} bits per token")
    if result.firing_rates:
        click.echo("firing rate per population:")
        for name, rate in result.firing_rates.items():
            click.echo(f"  {name:<18} {rate:.4f}")


def _bundle_eval_lines(r: Any) -> list[str]:
    bits = sorted(set(r.weight_bits.values()))
    what = (f"fixed point, {'/'.join(map(str, bits))}-bit chip weights" if r.precision == "fixed"
            else "partitioned float program")
    out = [f"{r.bundle} ({what}, {r.backend}) on {r.data} ({r.split}, {r.tokens} tokens, "
           f"{r.tokens_per_s:,.0f} tokens/s): {r.bits_per_token:.4f} bits per token"]
    s = r.source
    if s is None:
        out.append(f"source model: not compared ({r.source_missing})")
        rates = {k: (v, None) for k, v in r.firing_rates.items()}
    else:
        out.append(f"source model {s.model}: {s.bits_per_token:.4f} bits per token on the same "
                   f"tokens; quantization cost {s.quantization_cost_bits_per_token:+.4f} bits per "
                   f"token; greedy token agreement {s.greedy_agreement:.4f}")
        rates = {k: (v, s.firing_rate_change.get(k)) for k, v in r.firing_rates.items()}
    out.append("firing rate per population" + ("" if s is None else " (change vs source)") + ":")
    for name, (rate, change) in rates.items():
        out.append(f"  {name:<18} {rate:.4f}" + ("" if change is None else f"  {change:+.4f}"))
    return out


@click.command()
@click.option("--model", "model", type=click.Path(), default=None,
              help="Model file (default: the shipped example model).")
@click.option("--prompt", required=True)
@click.option("--tokens", "n_tokens", default=200, show_default=True, type=int)
@click.option("--temperature", default=1.0, show_default=True, type=float,
              help="0 = greedy decoding.")
@click.option("--top-p", default=0.9, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@model_options
@handle_errors
def generate(model: str | None, prompt: str, n_tokens: int, temperature: float, top_p: float,
             seed: int, tokenizer_path: str | None, binary_embedding: bool | None,
             rescale_every: int | None) -> None:
    """Stream generated text from PROMPT (RNN mode)."""
    from .. import api
    from ..sampling import SamplingOptions

    loaded = api.open_model(model, tokenizer_path, **overrides(binary_embedding, rescale_every))
    pieces = api.generate(loaded, prompt, n_tokens, SamplingOptions(temperature, top_p, seed))
    click.echo(prompt, nl=False)
    for piece in pieces:
        click.echo(piece, nl=False)
    click.echo()


@click.command("export-onnx")
@click.argument("model", required=False, type=click.Path())
@click.option("-o", "--out", "out_path", required=True, type=click.Path(),
              help="Where to write the step .onnx.")
@model_options
@handle_errors
def export_onnx(model: str | None, out_path: str, tokenizer_path: str | None,
                binary_embedding: bool | None, rescale_every: int | None) -> None:
    """Export MODEL's per-token step (tokens, state -> logits, next state) as ONNX."""
    from .. import api

    loaded = api.open_model(model, tokenizer_path, **overrides(binary_embedding, rescale_every))
    path = api.export_onnx(loaded, out_path)
    cfg = loaded.model.config
    click.echo(f"wrote {path} (inputs: tokens [B] int64, state [7, {cfg.n_layer}, B, "
               f"{cfg.n_embd}] float32; outputs: logits, next_state)")
