"""What every command shares: error rendering, the model options, progress on a terminal."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from typing import Any, Callable

import click

from ..errors import DeployError
from ..signals import interrupt_signum

log = logging.getLogger("spikegpt_deploy.cli")


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A DeployError becomes one ``error: ...`` line on stderr and exit code 1 (the rest of a
    multi-line message, e.g. a simulator's traceback, is logged for ``-v``). Ctrl-C, SIGTERM and
    SIGHUP (``signals.Terminated``) end with one ``interrupted (SIGNAME)`` line and exit code
    128 + the signal's number, after the cleanup they trigger (no Lava process or shared-memory
    segment outlives the command)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DeployError as exc:
            first, _, rest = str(exc).partition("\n")
            if rest:
                log.info("%s", rest)
            click.echo(f"error: {first}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP as signals.Terminated
            signum = interrupt_signum(exc)
            try:
                click.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
            except OSError:  # SIGHUP: the terminal may be gone
                pass
            sys.exit(128 + signum)
    return wrapper


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--tokenizer, --binary-embedding/--float-embedding, --rescale-every: every command that
    reads a model file takes them."""
    fn = click.option("--tokenizer", "tokenizer_path", type=click.Path(),
                      help="tokenizers JSON for a bare .pth state_dict (e.g. 20B_tokenizer.json).")(fn)
    fn = click.option("--binary-embedding/--float-embedding", default=None,
                      help="Override the Heaviside embedding setting.")(fn)
    fn = click.option("--rescale-every", type=int, default=None,
                      help="Reference RNN rescaling: halve every K layers (0 = off).")(fn)
    return fn


def cluster_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--workers / --address: run the text's windows on Ray (the [distributed] extra)."""
    fn = click.option("--address", default=None,
                      help="Run the windows on the existing Ray cluster at ADDR "
                           "(needs the [distributed] extra).")(fn)
    fn = click.option("--workers", type=int, default=None,
                      help="Run the windows on N local Ray worker processes, started and "
                           "stopped by the command (needs the [distributed] extra).")(fn)
    return fn


def cluster(workers: int | None, address: str | None) -> Any:
    """The ``distributed.Cluster`` the options ask for, or None (one process)."""
    if workers is None and address is None:
        return None
    from ..distributed import Cluster

    return Cluster(workers, address)


def overrides(binary_embedding: bool | None, rescale_every: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if binary_embedding is not None:
        out["binary_embedding"] = binary_embedding
    if rescale_every is not None:
        out["rescale_every"] = rescale_every
    return out


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout (nothing else).")(fn)


def quiet_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress lines (they go to stderr, and only to a terminal).")(fn)


def show_progress(quiet: bool) -> bool:
    """Progress lines go to stderr, and only when it is a terminal: logs and pipes stay clean."""
    return not quiet and sys.stderr.isatty()


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))
