"""signals: SIGTERM / SIGHUP as exceptions so that cleanup runs, ignored signals stay ignored,
and a cleanup holds signals back until it is done. Each case runs in its own Python process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The module alone, without the package's __init__ (which imports torch): a fast start.
PRELUDE = textwrap.dedent(f"""
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location(
        "signals", {str(ROOT / "spikegpt_deploy" / "signals.py")!r})
    signals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(signals)
""")


def run(body: str, ignore: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    def preexec() -> None:  # default actions, except what the case ignores on purpose
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN if signum in ignore else signal.SIG_DFL)
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=60, start_new_session=True,
                          preexec_fn=preexec)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_termination_runs_cleanup_then_ends_by_the_signal(signum):
    p = run(f"""
        try:
            with signals.termination_raises():
                try:
                    os.kill(os.getpid(), {int(signum)})
                    signal.pause()
                finally:
                    print("cleaned up", flush=True)
        except BaseException:
            print("the exception escaped", flush=True)
        print("kept running", flush=True)
    """)
    assert p.returncode == -signum and p.stdout == "cleaned up\n", (p.returncode, p.stdout,
                                                                   p.stderr)


def test_ignored_signal_stays_ignored():
    p = run("""
        with signals.termination_raises():
            os.kill(os.getpid(), signal.SIGHUP)
        print("still running", flush=True)
    """, ignore=(signal.SIGHUP,))
    assert p.returncode == 0 and p.stdout == "still running\n", p.stderr


def test_command_line_handlers_raise_terminated_with_the_signal():
    p = run("""
        assert signals.install_termination_handlers() == [signal.SIGTERM, signal.SIGHUP]
        for signum in (signal.SIGTERM, signal.SIGHUP):
            try:
                os.kill(os.getpid(), signum)
                signal.pause()
            except KeyboardInterrupt as exc:
                print(signals.interrupt_signum(exc), type(exc).__name__, flush=True)
        with signals.termination_raises():  # a caller's handler is left alone
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.pause()
            except signals.Terminated as exc:
                print("caller sees", exc.signum, flush=True)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"{int(signal.SIGTERM)} Terminated",
                                     f"{int(signal.SIGHUP)} Terminated",
                                     f"caller sees {int(signal.SIGTERM)}"]


def test_deferred_signals_arrive_after_the_cleanup():
    p = run("""
        signals.install_termination_handlers()
        try:
            with signals.deferred_signals():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGTERM)
                print("cleanup finished", flush=True)
        except KeyboardInterrupt as exc:
            print("then", signals.interrupt_signum(exc), flush=True)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["cleanup finished", f"then {int(signal.SIGINT)}"]
