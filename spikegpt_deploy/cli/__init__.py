"""The ``spikegpt-deploy`` command line: thin click wrappers over ``spikegpt_deploy.api``.

Each command parses its options, calls one ``api`` function (``api.COMMANDS``) and renders the
result. Every DeployError is printed as one ``error: ...`` line and exits with code 1, without a
traceback. Results go to stdout (``--json``: exactly one JSON document); progress lines go to
stderr, and only when it is a terminal (``--quiet`` silences them). SIGTERM and SIGHUP clean up
as Ctrl-C does and end the command with exit code 128 + the signal's number (``signals``).
"""

from __future__ import annotations

import logging

import click

from ..signals import install_termination_handlers
from .bundle_commands import convert, export, inspect, simulate
from .model_commands import evaluate, export_onnx, generate, train
from .profile_commands import crosscheck, profile, report, targets


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def main(verbose: bool) -> None:
    """spikegpt-deploy: convert, simulate and profile SpikeGPT for neuromorphic hardware."""
    install_termination_handlers()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


for _command in (train, evaluate, generate, export_onnx, convert, inspect, export, simulate,
                 profile, crosscheck, report, targets):
    main.add_command(_command)

__all__ = ["main"]
