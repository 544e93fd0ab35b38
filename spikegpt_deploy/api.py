"""The functions behind the command line: every command is a thin wrapper over one of these
(``COMMANDS`` maps command names to them), so what a command can do, Python can do.

The CLI only parses options and renders results; checks, defaults and policies live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .checkpoint import LoadedModel
from .data import encode_split, load_corpus
from .errors import CheckpointError, DataError
from .evaluation import EvalResult, EvalSums, evaluate_ids
from .inputs import check_count, check_real
from .model_files import (DEFAULT_MODEL_ENV, DEFAULT_MODEL_NAME, default_model_path,  # noqa: F401
                          open_model, require_tokenizer)
from .outputs import check_output
from .sampling import SamplingOptions, encode_prompt, generate_ids

# the bundle commands' functions live in bundle_api; they are this module's public names too
from .bundle_api import (SimulationRun, convert, default_bundle_dir, evaluate_bundle,  # noqa
                         export_bundle, find_source_model, inspect_bundle, simulate)


def train(options: Any, on_progress: Callable[[Any], None] | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train a char-level SpikeGPT (``training.TrainOptions``) and write ``options.out``;
    returns the model's metadata. The output path is checked before training starts."""
    from .training import train as run_training

    check_output(options.out, "--out")
    return run_training(options, on_progress, resume=resume)


def evaluate(loaded: LoadedModel, data: str, split: str = "valid",
             max_tokens: int | None = None, window_len: int | None = None,
             cluster: Any = None, source: Any = None) -> EvalResult:
    """Bits per token and firing rates of ``loaded`` on the held-out split of ``data``.

    With ``cluster`` (a ``distributed.Cluster``) the windows run as shards on Ray, each worker
    opening the model from ``source`` (a ``distributed.ModelSource``; default: the file of
    ``loaded`` without load options); the figures equal the single-process run's."""
    if max_tokens is not None:
        check_count(max_tokens, "--max-tokens", 1, 2**62)
    tokenizer = require_tokenizer(loaded)
    corpus = load_corpus(data)
    ids = encode_split(tokenizer, corpus, split)
    window = window_len or loaded.model.config.ctx_len
    if max_tokens is not None and max_tokens < window:
        raise DataError(f"--max-tokens {max_tokens} is less than one window of {window} tokens; "
                        f"pass --max-tokens {window} or more")
    if len(ids) < window + 1:
        raise DataError(f"{data} {split} split has {len(ids)} tokens, fewer than one window of "
                        f"{window + 1}; use a longer text")
    if cluster is None:
        return evaluate_ids(loaded.model, ids, window, max_tokens=max_tokens)
    from .distributed import ModelSource
    from .evaluation import evaluate_shard

    return evaluate_distributed(evaluate_shard, source or ModelSource(str(loaded.path)), ids,
                                window, cluster, max_tokens)


def evaluate_distributed(shard_fn: Callable[..., EvalSums], source: Any, ids: Any,
                         window: int, cluster: Any, max_tokens: int | None = None,
                         batch_size: int = 16) -> EvalResult:
    """Windows of ``ids`` in consecutive shards (aligned on ``batch_size`` windows, so every
    batch is a batch of the single-process run) on Ray; ``shard_fn(source, ids_slice, window,
    rows, batch_size)`` returns the integer ``EvalSums`` of its rows, which add up exactly."""
    from .distributed import ray_cluster, run_shards, split_shards
    from .evaluation import n_windows

    n = n_windows(ids, window, max_tokens)
    with ray_cluster(cluster) as slots:
        shards = split_shards(n, slots, align=batch_size)
        args = [(source, ids[r.start * window:r.stop * window + 1], window,
                 range(len(r)), batch_size) for r in shards]
        parts = run_shards(shard_fn, args, lambda i: (
            f"shard {i + 1} of {len(shards)} (windows {shards[i].start}-{shards[i].stop - 1} "
            f"of {window} tokens)"))
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total.result(window)


def model_source(loaded: LoadedModel, tokenizer_path: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> Any:
    """How a Ray worker opens the same model (``distributed.ModelSource``; Ray not imported)."""
    from .distributed import ModelSource

    return ModelSource(str(loaded.path), None if tokenizer_path is None else str(tokenizer_path),
                       tuple(sorted((overrides or {}).items())))


LAVA_EVAL_TOKENS = 1024  # default held-out tokens of a Lava evaluation (about 100 tokens/s)


def evaluate_bundle_lava(bundle: str | Path, data: str, split: str = "valid",
                         max_tokens: int | None = None, precision: str = "fixed") -> Any:
    """Bits per token of a bundle in the Lava simulation (pipelined, teacher-forced) on the
    first ``max_tokens`` tokens of the held-out split, with the equivalence to its numpy
    reference (``simulation.pipelined.evaluate_tokens``)."""
    from .bundle import load_bundle
    from .simulation.pipelined import evaluate_tokens

    n = LAVA_EVAL_TOKENS if max_tokens is None else max_tokens
    check_count(n, "--max-tokens", 2, 2**62)
    tok = load_bundle(bundle).tokenizer
    if tok is None:
        raise DataError(f"{bundle}: the bundle has no tokenizer.json to encode {data}")
    ids = encode_split(tok, load_corpus(data), split)[:n]
    return evaluate_tokens(bundle, [int(t) for t in ids], precision)


def generate(loaded: LoadedModel, prompt: str, n_tokens: int,
             options: SamplingOptions) -> Iterator[str]:
    """The decoded text of each generated token (RNN mode, streaming). Every argument is checked
    before this returns, so nothing is printed for a bad one."""
    tokenizer = require_tokenizer(loaded)
    check_count(n_tokens, "--tokens")
    options.validate()
    ids = generate_ids(loaded.model, encode_prompt(tokenizer, prompt), n_tokens, options)
    return (tokenizer.decode([tok]) for tok in ids)


def export_onnx(loaded: LoadedModel, out_path: str | Path) -> Path:
    """Write ``loaded``'s per-token step (tokens, state -> logits, next state) as checked ONNX."""
    from converters.onnx_export import export_step_onnx

    return export_step_onnx(loaded.model, check_output(out_path, "-o/--out"))


def profile(model: str | Path | None, data: str = "kjv", n_tokens: int = 256, *,
            targets: Sequence[str] = ("loihi2",), host_profile: str | None = None,
            user_profiles: Sequence[str] = (), policy: str = "spikes",
            precision: str = "fixed", timesteps: float | None = None, hops: float | None = None,
            sensitivity_factor: float = 2.0, tokenizer_path: str | Path | None = None,
            overrides: dict[str, Any] | None = None,
            out_dir: str | Path | None = None, host_timing: str = "cpu",
            neurobench: bool = False, window: int | None = None,
            cluster: Any = None) -> tuple[Any, list[Path]]:
    """Count and price a model file (spikes recorded in PyTorch) or a bundle directory (spikes
    recorded in its Lava simulation, priced on the target the bundle carries). With ``out_dir``
    (checked first) profile.json and the CSV tables are written there. ``host_timing`` names the
    profile whose [timing] gives the host's time per op; ``neurobench`` (model files) adds
    NeuroBench's metrics on the same tokens. Returns the ``ProfileResult`` and the paths."""
    from hw_profiles import load_profile

    from .profiling import profile_bundle, profile_checkpoint
    from .profiling.report import write_outputs

    check_count(n_tokens, "--tokens", 1)
    for name, value in (("--timesteps", timesteps), ("--hops", hops)):
        if value is not None:
            check_real(value, name, 0.0)
    check_real(sensitivity_factor, "--sensitivity-factor", 1.0, above=True)
    if out_dir is not None:
        check_output(out_dir, "-o/--out", folder=True)
    load_profile(host_timing)   # a bad --host-timing fails before the work
    if model is not None and Path(model).is_dir():
        if user_profiles or tuple(targets) != ("loihi2",) or policy != "spikes" or neurobench:
            raise DataError("a bundle is profiled on the target and policy it was converted "
                            "for; --target, --policy, --profile and --neurobench apply to "
                            "model files")
        if tokenizer_path is not None or overrides:
            raise DataError("a bundle carries its own tokenizer and config; --tokenizer and "
                            "model overrides apply to model files")
        if window is not None or cluster is not None:
            raise DataError("a bundle is profiled in one Lava simulation; --window, --workers "
                            "and --address apply to model files")
        result = profile_bundle(model, data, n_tokens, precision, host_profile=host_profile,
                                timesteps=timesteps, hops=hops,
                                sensitivity_factor=sensitivity_factor, host_timing=host_timing)
    else:
        result = profile_checkpoint(model, data, n_tokens, targets, host_profile,
                                    user_profiles, policy, timesteps=timesteps, hops=hops,
                                    sensitivity_factor=sensitivity_factor,
                                    tokenizer_path=tokenizer_path, overrides=overrides,
                                    host_timing=host_timing, neurobench=neurobench,
                                    window=window, cluster=cluster)
    paths = write_outputs(result, out_dir) if out_dir is not None else []
    return result, paths


def crosscheck(bundle: str | Path, data: str = "kjv", n_tokens: int = 16, *,
               simulator: str = "sanafe", profile: str | Path = "loihi",
               precision: str = "fixed", out_dir: str | Path | None = None) -> dict[str, Any]:
    """Our chip energy per layer and latency beside SANA-FE's on the bundle's measured spikes
    (the [crosscheck] extra, GPL-3.0, imported only here); with ``out_dir`` (checked first)
    SANA-FE's input files and crosscheck.json are kept there."""
    from .crosscheck import crosscheck_bundle, write_result

    check_count(n_tokens, "--tokens", 1)
    if out_dir is not None:
        check_output(out_dir, "-o/--out", folder=True)
    result = crosscheck_bundle(bundle, data, n_tokens, simulator, profile, precision,
                               out_dir=out_dir)
    if out_dir is not None:
        write_result(result, out_dir)
    return result


def report(profile_json: str | Path, html_path: str | Path | None = None
           ) -> tuple[Any, Path | None]:
    """Read a profile.json; with ``html_path`` (checked first) also write the HTML report.
    Returns the ``ProfileResult`` and the HTML path (or None)."""
    from .profiling.html import write_html
    from .profiling.report import load_json

    if html_path is not None:
        check_output(html_path, "--html")
    result = load_json(profile_json)
    return result, write_html(result, html_path) if html_path is not None else None


def targets() -> list[dict[str, Any]]:
    """The built-in hardware profiles: name, role, title, default host, and how many figures
    of each kind (datasheet, measured, ...) and from each source they hold."""
    from hw_profiles import list_profiles, load_profile

    out = []
    for name in list_profiles():
        prof = load_profile(name)
        kinds: dict[str, int] = {}
        sources: dict[str, int] = {}
        for _, _, q in prof.quantities():
            kinds[q.kind] = kinds.get(q.kind, 0) + 1
            sources[q.source] = sources.get(q.source, 0) + 1
        out.append({"name": name, "role": prof.role, "title": prof.title,
                    "default_host": prof.default_host, "path": str(prof.path),
                    "sha256": prof.sha256, "kinds": dict(sorted(kinds.items())),
                    "sources": dict(sorted(sources.items(), key=lambda kv: -kv[1]))})
    return out


# command name -> the function it wraps
COMMANDS: dict[str, Callable[..., Any]] = {
    "train": train, "evaluate": evaluate, "generate": generate, "export-onnx": export_onnx,
    "convert": convert, "inspect": inspect_bundle, "export": export_bundle,
    "simulate": simulate, "profile": profile, "crosscheck": crosscheck,
    "report": report, "targets": targets,
}
