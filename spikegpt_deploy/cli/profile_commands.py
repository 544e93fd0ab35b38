"""Commands that count and price: profile, crosscheck, report, targets."""

from __future__ import annotations

import click

from .common import (cluster, cluster_options, echo_json, handle_errors, json_option,
                     model_options, overrides)


@click.command(name="profile")
@click.argument("model", required=False, type=click.Path())
@click.option("--data", default="kjv", show_default=True, help="'kjv' or a UTF-8 text file.")
@click.option("--tokens", "n_tokens", default=256, show_default=True, type=int,
              help="Profile the first N tokens of the held-out (valid) split.")
@click.option("--target", "targets", multiple=True, default=("loihi2",), show_default=True,
              help="Chip profile name or TOML (repeatable); the IR is partitioned for each.")
@click.option("--host-profile", default=None,
              help="Profile (name or TOML) pricing host ops (default: each target's default_host).")
@click.option("--profile", "user_profiles", multiple=True, type=click.Path(),
              help="Your own profile TOML (repeatable): chip adds a target, host prices host "
                   "ops, ann adds a baseline.")
@click.option("--policy", default="spikes", show_default=True,
              type=click.Choice(["spikes", "graded"]))
@click.option("--timesteps", type=float, default=None,
              help="Chip timesteps per generated token (default: the decode regime of the "
              "simulated schedule).")
@click.option("--hops", type=float, default=None,
              help="Mesh hops per spike message for every layer (default: each layer's own, "
              "from the placement of its sources and readers on the mapped mesh).")
@click.option("--sensitivity-factor", default=2.0, show_default=True, type=float)
@click.option("--precision", type=click.Choice(["float", "fixed"]), default="fixed",
              show_default=True, help="For a bundle: the Lava precision of the recording run.")
@click.option("--host-timing", default="cpu", show_default=True,
              help="Profile (name or TOML) whose [timing] gives the host's time per op.")
@click.option("--neurobench", is_flag=True,
              help="Also run NeuroBench's metrics on the same tokens, beside ours per layer "
                   "(model files; needs the optional extra [neurobench]).")
@click.option("-o", "--out", "out_dir", default="profile", show_default=True,
              type=click.Path(), help="Folder for profile.json and the CSV files.")
@click.option("--window", type=int, default=None,
              help="Run the tokens as windows of W tokens, each from the zero state (default: "
                   "one stream; with --workers/--address: the model's context length).")
@json_option
@model_options
@cluster_options
@handle_errors
def profile(model: str | None, data: str, n_tokens: int, targets: tuple[str, ...],
            host_profile: str | None, user_profiles: tuple[str, ...], policy: str,
            timesteps: float | None, hops: float | None, sensitivity_factor: float,
            precision: str, host_timing: str, neurobench: bool, out_dir: str,
            window: int | None, as_json: bool, tokenizer_path: str | None,
            binary_embedding: bool | None, rescale_every: int | None, workers: int | None,
            address: str | None) -> None:
    """Count spikes, synaptic/host ops and chip-host traffic; price them per target.

    MODEL is a model file (spikes recorded in PyTorch, fast) or a bundle directory (spikes
    recorded in the Lava simulation of the bundle, priced on the target it carries)."""
    from .. import api
    from ..profiling.report import render_table

    result, paths = api.profile(
        model, data, n_tokens, targets=targets, host_profile=host_profile,
        user_profiles=user_profiles, policy=policy, precision=precision, timesteps=timesteps,
        hops=hops, sensitivity_factor=sensitivity_factor, tokenizer_path=tokenizer_path,
        overrides=overrides(binary_embedding, rescale_every), out_dir=out_dir,
        host_timing=host_timing, neurobench=neurobench, window=window,
        cluster=cluster(workers, address))
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(render_table(result))
    click.echo(f"\nwrote {', '.join(str(p) for p in paths)}")


@click.command(name="crosscheck")
@click.argument("bundle", type=click.Path())
@click.option("--data", default="kjv", show_default=True, help="'kjv' or a UTF-8 text file.")
@click.option("--tokens", "n_tokens", default=16, show_default=True, type=int,
              help="Cross-check on the first N tokens of the held-out (valid) split.")
@click.option("--simulator", type=click.Choice(["sanafe"]), default="sanafe", show_default=True,
              help="The independent simulator (SANA-FE, GPL-3.0: the [crosscheck] extra).")
@click.option("--profile", "profile_name", default="loihi", show_default=True,
              help="Chip profile whose per-event figures both sides use.")
@click.option("--precision", type=click.Choice(["float", "fixed"]), default="fixed",
              show_default=True, help="The Lava precision of the run that records the spikes.")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(),
              help="Keep SANA-FE's input files (arch.yaml, snn.yaml) and crosscheck.json here.")
@json_option
@handle_errors
def crosscheck(bundle: str, data: str, n_tokens: int, simulator: str, profile_name: str,
               precision: str, out_dir: str | None, as_json: bool) -> None:
    """Our chip energy and latency per layer beside an independent simulator's (SANA-FE)."""
    from .. import api
    from ..crosscheck import render_table

    result = api.crosscheck(bundle, data, n_tokens, simulator=simulator, profile=profile_name,
                            precision=precision, out_dir=out_dir)
    if as_json:
        echo_json(result)
        return
    click.echo(render_table(result) + (f"\nwrote {out_dir}" if out_dir else ""))


@click.command(name="report")
@click.argument("profile_json", type=click.Path())
@click.option("--html", "html_path", type=click.Path(), default=None,
              help="Write a self-contained HTML report with plots here.")
@handle_errors
def report(profile_json: str, html_path: str | None) -> None:
    """Print the tables of a profile.json (and write an HTML report with --html)."""
    from .. import api
    from ..profiling.report import render_table

    result, html = api.report(profile_json, html_path)
    click.echo(render_table(result))
    if html is not None:
        click.echo(f"\nwrote {html}")


@click.command(name="targets")
@json_option
@handle_errors
def targets(as_json: bool) -> None:
    """List the built-in hardware profiles: role, title and the sources of their figures."""
    from .. import api

    profiles = api.targets()
    if as_json:
        echo_json(profiles)
        return
    for p in profiles:
        host = f", host ops on {p['default_host']}" if p["default_host"] else ""
        click.echo(f"{p['name']:<12} {p['role']:<5} {p['title']}{host}")
        click.echo("             figures: " + ", ".join(f"{n} {k}" for k, n in p["kinds"].items()))
        for source, n in p["sources"].items():
            click.echo(f"             [{n:>2}] {source}")
