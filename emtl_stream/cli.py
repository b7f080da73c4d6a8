"""The ``emtl-stream`` command: argparse subcommands turned into calls and exit codes.

Exit codes (protocol.md): 0 success, 2 usage or configuration error, 1 runtime
failure, each failure with a one-line reason on stderr (a traceback only with
``--verbose``). Handlers are imported lazily so ``emtl-stream status`` does not
compile numba kernels.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# command -> "module:function"; each function takes the parsed namespace, returns an exit code.
_HANDLERS = {
    "demo": "emtl_stream.demo:main",
    "run": "emtl_stream.commands:run_daemon",
    "replay": "emtl_stream.commands:replay",
    "train": "emtl_stream.commands:train",
    "recalibrate": "emtl_stream.commands:recalibrate",
    "status": "emtl_stream.commands:status",
    "rollback": "emtl_stream.commands:rollback",
    "subscribe": "emtl_stream.commands:subscribe",
    "warmup": "emtl_stream.commands:warmup",
    "evaluate": "emtl_stream.evaluate:main",
    "bench": "emtl_stream.commands:bench",
}


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", default=None, help="control address (default from config)")
    p.add_argument("--pub", default=None, help="publisher address (default from config)")
    p.add_argument("--config", default=None, help="TOML config file to take addresses from")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="emtl-stream",
        description="Real-time EM transfer-learning calibration daemon for myoelectric control.",
    )
    parser.add_argument("--version", action="version", version=f"emtl_stream {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="log at INFO and show tracebacks on failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="self-contained demo: synthetic armband, shift, recalibration")
    p.add_argument("--seconds-per-class", type=float, default=1.0,
                   help="calibration burst length per class (default 1.0)")
    p.add_argument("--shift", type=float, default=1.0,
                   help="electrode shift in electrode spacings (default 1.0)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic armband")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write confusion matrices and the EM trace (needs matplotlib)")
    p.add_argument("--min-recovery", type=float, default=0.8,
                   help="exit non-zero if accuracy after recalibration is below this")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("--config", default=None, help="TOML config (default: config/default.toml)")

    p = sub.add_parser("replay", help="play a recording (or --synthetic EMG) as an LSL outlet")
    p.add_argument("file", nargs="?", default=None, help=".npz (shared format), .xdf or .csv")
    p.add_argument("--synthetic", action="store_true", help="generate EMG instead of a file")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor (0 = as fast as possible)")
    p.add_argument("--shift", type=float, default=0.0, help="roll channels by S electrodes")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--name", default="emtl-replay", help="LSL stream name")
    p.add_argument("--channels", type=int, default=8, help="synthetic: number of electrodes")
    p.add_argument("--fs", type=float, default=1000.0, help="synthetic: sampling rate (Hz)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after S seconds (0 = never)")
    p.add_argument("--follow-prompts", default=None, metavar="ADDRESS",
                   help="synthetic: perform the classes prompted on this ZeroMQ PUB address")

    p = sub.add_parser("train", help="fit a source model (features + labelled GMM/LVQ)")
    p.add_argument("files", nargs="+", help="recordings with labels (.npz, .xdf, .csv)")
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.add_argument("--config", default=None, help="TOML config for the feature settings")
    p.add_argument("--model", default="lgmm", choices=["lgmm", "gmlvq", "lgmlvq"])
    p.add_argument("--covariance-type", default="tied")
    p.add_argument("--components-per-class", type=int, default=1)
    p.add_argument("--reps", default=None, help="only these repetitions, e.g. 0,1,2 (.npz)")

    p = sub.add_parser("recalibrate", help="ask a running daemon for a prompted recalibration")
    _client_args(p)
    p.add_argument("--classes", default=None, help="comma-separated subset of classes")
    p.add_argument("--seconds", type=float, default=None, help="seconds per class")
    p.add_argument("--repetitions", type=int, default=None)

    for name, text in (("status", "show the daemon's state"),):
        p = sub.add_parser(name, help=text)
        _client_args(p)
        p.add_argument("--json", action="store_true", help="print the raw JSON reply")
    p = sub.add_parser("rollback", help="make an earlier H live")
    _client_args(p)
    p.add_argument("version", nargs="?", type=int, default=None)
    p = sub.add_parser("subscribe", help="print published messages")
    _client_args(p)
    p.add_argument("topics", nargs="*", default=["pred", "event", "prompt"])
    p.add_argument("--count", type=int, default=0, help="stop after N messages (0 = never)")

    p = sub.add_parser("warmup", help="compile or cache-load every numba kernel and report times")
    p.add_argument("--config", default=None, help="TOML config whose code paths are warmed up")

    p = sub.add_parser("evaluate", help="offline evaluation on shared-format recordings")
    p.add_argument("data_dir", help="folder with ciil_es_sNN_{baseline,shifted}.npz files")
    p.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write a Markdown table")
    p.add_argument("--subjects", default=None, help="comma-separated subject ids (default all)")
    p.add_argument("--reference", action="store_true",
                   help="include the reference package (em-transfer-learning) if installed")
    p.add_argument("--config", default=None, help="TOML config whose settings are evaluated")
    p.add_argument("--unlabelled", action="store_true",
                   help="zero-label recalibration, optimal-transport and shift-detector rows")

    p = sub.add_parser("bench", help="run the benchmarks and print the tables")
    p.add_argument("--quick", action="store_true", help="a small subset (about a minute)")
    return parser


def main(argv=None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    from .logs import set_log_level

    if args.verbose:
        set_log_level("INFO")
    module_name, func_name = _HANDLERS[args.command].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # one line for users, the traceback with --verbose
        from .errors import ConfigError

        if args.verbose:
            import traceback

            traceback.print_exc()
        code = EXIT_USAGE if isinstance(exc, (ConfigError, FileNotFoundError)) else EXIT_FAILURE
        print(f"emtl-stream {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
