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
@click.option("--resume", is_flag=True, help="Continue from <out>.ckpt.")
@_handle_errors
def train(resume: bool, **kwargs: Any) -> None:
    """Train a char-level SpikeGPT on CPU and write MODEL.pt."""
    from tqdm import tqdm

    from .training import TrainOptions, train as run_training

    opts = TrainOptions(**kwargs)
    bar = tqdm(total=opts.steps, unit="step", dynamic_ncols=True, mininterval=1.0)
    last_bpc: list[float] = []

    def progress(p: Any) -> None:
        if bar.n == 0 and p.step > 1:
            bar.update(p.step - 1)
        if p.valid_bpc is not None:
            last_bpc.append(p.valid_bpc)
            bar.write(f"step {p.step}: validation {p.valid_bpc:.4f} bits/char")
        bar.set_postfix(loss=f"{p.loss:.3f}", tok_s=f"{p.tokens_per_s:.0f}",
                        val_bpc=f"{last_bpc[-1]:.3f}" if last_bpc else "-", refresh=False)
        bar.update(1)

    try:
        meta = run_training(opts, progress, resume=resume)
    finally:
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


if __name__ == "__main__":  # pragma: no cover
    main()
