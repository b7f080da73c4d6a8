"""The ``emtl-stream`` command: argparse subcommands turned into calls and exit codes.

Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure, each
failure with one line on stderr (a traceback only with ``--verbose``). Handlers are
imported lazily so ``emtl-stream status`` does not compile numba kernels.

Adding a subcommand is one self-contained block::

    @command("name", "emtl_stream.module:function", "one-line help")
    def _name(p):
        p.add_argument(...)

The handler takes the parsed namespace and returns an exit code. ``--verbose`` and
``--config`` are accepted before or after the subcommand (every subcommand has them).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# command -> (handler "module:function", add_arguments(parser), help); filled by @command.
_COMMANDS: dict[str, tuple[str, object, str]] = {}


def command(name: str, handler: str, help: str):
    """Register a subcommand whose decorated function adds its own arguments.

    Parameters
    ----------
    name : str
        The subcommand, as typed.
    handler : str
        ``"module:function"`` run with the parsed arguments (imported only then).
    help : str
        One line for ``emtl-stream --help``.

    Returns
    -------
    callable
        The decorator; it records the decorated ``add_arguments(parser)`` function.
    """
    def register(add_arguments):
        _COMMANDS[name] = (handler, add_arguments, help)
        return add_arguments
    return register


def _common_flags(suppress: bool) -> argparse.ArgumentParser:
    """Build the parser of ``--verbose`` and ``--config``.

    In subcommands they default to SUPPRESS so a value given before the subcommand
    is not overwritten by the subparser's default.
    """
    p = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    p.add_argument("--verbose", "-v", action="store_true",
                   default=argparse.SUPPRESS if suppress else False,
                   help="log at INFO (liblsl's log too) and show tracebacks on failure")
    p.add_argument("--config", default=default, metavar="FILE",
                   help="TOML config file (default: the built-in defaults, which "
                        "config/default.toml lists; EMTL_<SECTION>_<KEY> overrides either)")
    return p


def _client_args(p: argparse.ArgumentParser, timeout_default: float | None = 5.0) -> None:
    p.add_argument("--control", default=None, help="control address (default from config)")
    p.add_argument("--pub", default=None, help="publisher address (default from config)")
    p.add_argument("--timeout", type=_positive_float, default=timeout_default, metavar="S",
                   help=f"seconds to wait for the daemon (default {timeout_default})")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def _version_number(text: str) -> int:
    from .io.protocol import MAX_VERSION

    shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"
    digits = text.strip().lstrip("+-")
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{shown!r} is not a map version (an integer)")
    if len(digits) > len(str(MAX_VERSION)):  # checked before int(): no digit-limit error
        raise argparse.ArgumentTypeError(f"map versions are at most {MAX_VERSION}, got {shown}")
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"map versions start at 1, got {v}")
    if v > MAX_VERSION:
        raise argparse.ArgumentTypeError(f"map versions are at most {MAX_VERSION}, got {v}")
    return v


def _id_list(text: str) -> str:
    """``1,2,5``: checked here so a typo is a usage error, passed on as text."""
    parts = [s.strip() for s in text.split(",")]
    if not parts or not all(s.isdigit() for s in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,5, got "
                                         f"{text!r}")
    return ",".join(parts)


#: Longest lead-in ``evaluate --lead-in`` accepts: a CIIL class segment lasts a few
#: seconds, and the burst must still fit after it.
LEAD_IN_MAX_S = 5.0


def _lead_in_seconds(text: str) -> float:
    """Seconds in [0, LEAD_IN_MAX_S]: checked here so a typo is a usage error."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= LEAD_IN_MAX_S:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds in [0, {LEAD_IN_MAX_S:g}], got "
                                         f"{text!r}")
    return value


COVARIANCE_TYPES = ("full", "tied", "diag", "tied_diag", "spherical", "tied_spherical")


# --------------------------------------------------------------------------- subcommands
@command("demo", "emtl_stream.commands:demo",
         "self-contained demo: synthetic armband, shift, recalibration")
def _demo(p):
    p.add_argument("--seconds-per-class", type=_positive_float, default=1.0,
                   help="calibration burst length per class (default 1.0)")
    p.add_argument("--shift", type=float, default=1.0,
                   help="electrode shift in electrode spacings (default 1.0)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic armband")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write confusion matrices and the EM trace (needs matplotlib)")
    p.add_argument("--min-recovery", type=float, default=0.8,
                   help="exit non-zero if accuracy after recalibration is below this")
    p.add_argument("--rate", type=_positive_float, default=3.0,
                   help="play the armband this many times faster than real time; the daemon "
                        "runs on the same sample clock (default 3; 1 = real time)")


@command("run", "emtl_stream.commands:run_daemon", "run the daemon in the foreground")
def _run(p):
    from .config import Config

    d = Config()
    p.epilog = (f"Defaults (from the code; config/default.toml lists them all): publisher "
                f"{d.zmq.pub}, control {d.zmq.control}, state folder {d.state.dir!r}, "
                f"model {d.model.path or 'none (train one with train --live)'}, stream: "
                f"any {d.stream.type} stream (pin yours with [stream] name or source_id).")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="state folder (default: [state] dir, 'state')")


@command("replay", "emtl_stream.commands:replay",
         "play a recording (or --synthetic EMG) as an LSL outlet")
def _replay(p):
    p.add_argument("file", nargs="?", default=None, help=".npz (shared format), .xdf or .csv")
    p.add_argument("--synthetic", action="store_true", help="generate EMG instead of a file")
    p.add_argument("--rate", type=_nonneg_float, default=1.0,
                   help="speed factor (0 = as fast as possible)")
    p.add_argument("--shift", type=float, default=0.0,
                   help="roll channels by S electrodes (a file: whole electrodes only)")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--name", default="emtl-replay",
                   help="LSL stream name (markers: NAME-markers; default emtl-replay)")
    p.add_argument("--source-id", default=None,
                   help="LSL source_id (default: derived from the name and the source)")
    p.add_argument("--channels", type=int, default=8, help="synthetic: number of electrodes")
    p.add_argument("--fs", type=_positive_float, default=1000.0,
                   help="synthetic: sampling rate (Hz)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed of the armband")
    p.add_argument("--seconds", type=_nonneg_float, default=0.0,
                   help="stop after S seconds (0 = never)")
    p.add_argument("--follow-prompts", default=None, metavar="ADDRESS",
                   help="synthetic: perform the classes prompted on this ZeroMQ PUB address "
                        "(default: cycle through the classes, 3 s each)")


@command("record", "emtl_stream.commands:record",
         "record a live EMG stream and its Markers stream to a labelled file")
def _record(p):
    p.add_argument("out", help="file to write: .npz (what train reads), .xdf or .csv")
    p.add_argument("--stream", default=None, metavar="NAME",
                   help="EMG stream name (default: [stream] name)")
    p.add_argument("--source-id", default=None, help="EMG stream source_id "
                   "(default: [stream] source_id)")
    p.add_argument("--markers", default=None, metavar="NAME",
                   help="Markers stream with the class names (default: STREAM-markers; "
                        "'none' records unlabelled)")
    p.add_argument("--seconds", type=_positive_float, required=True,
                   help="how long to record")
    p.add_argument("--resolve-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="seconds to wait for the streams (default 10)")


@command("train", "emtl_stream.commands:train",
         "fit a source model from labelled recordings (or --live: a prompted session)")
def _train(p):
    p.add_argument("files", nargs="*", help="recordings with labels (.npz, .xdf, .csv) or a "
                   "daemon's saved bursts (state/bursts/*.npz)")
    p.add_argument("--out", default=None, help="model file to write (.npz)")
    p.add_argument("--model", default="lgmm", choices=["lgmm", "gmlvq", "lgmlvq"])
    p.add_argument("--covariance-type", default="tied", choices=COVARIANCE_TYPES)
    p.add_argument("--components-per-class", type=int, default=1)
    p.add_argument("--reps", default=None, type=_id_list,
                   help="only these repetitions, e.g. 0,1,2 (.npz)")
    p.add_argument("--live", action="store_true",
                   help="prompted training session on a running daemon (its stream); the "
                        "daemon installs the model, --out also writes a copy")
    p.add_argument("--classes", default=None, help="--live: comma-separated class names")
    p.add_argument("--seconds", type=_positive_float, default=None,
                   help="--live: seconds per class")
    p.add_argument("--repetitions", type=int, default=None, help="--live: repetitions")
    _client_args(p)


@command("recalibrate", "emtl_stream.commands:recalibrate",
         "ask a running daemon for a prompted recalibration")
def _recalibrate(p):
    _client_args(p)
    p.add_argument("--classes", default=None, help="comma-separated subset of classes")
    p.add_argument("--seconds", type=_positive_float, default=None, help="seconds per class")
    p.add_argument("--repetitions", type=int, default=None)
    p.add_argument("--no-labels", action="store_true",
                   help="zero-label: the daemon collects [adapt] seconds of live windows "
                        "without prompts and fits the map without labels")
    p.add_argument("--ramp", action="store_true",
                   help="proportional speed: prompt a slow ramp from rest to a strong "
                        "contraction per movement and re-derive the speed calibration from "
                        "it (the map H is kept; --seconds default [calibration] "
                        "ramp_seconds_per_class)")


@command("status", "emtl_stream.commands:status", "show the daemon's state")
def _status(p):
    _client_args(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON reply")


@command("rollback", "emtl_stream.commands:rollback",
         "make an earlier map H live (default: the one before the live one)")
def _rollback(p):
    _client_args(p)
    p.add_argument("version", nargs="?", type=_version_number, default=None,
                   help="map version (1 = the identity map of the source model)")


@command("label", "emtl_stream.commands:label",
         "label the windows from now on as CLASS ('none' stops labelling)")
def _label(p):
    _client_args(p)
    p.add_argument("label", metavar="CLASS")


@command("fit", "emtl_stream.commands:fit", "fit H on the windows labelled with `label`")
def _fit(p):
    _client_args(p)
    p.add_argument("--min-windows", type=int, default=None)


@command("cancel", "emtl_stream.commands:cancel",
         "abort a calibration (the live map stays live)")
def _cancel(p):
    _client_args(p)


@command("save", "emtl_stream.commands:save", "make the daemon persist its state now")
def _save(p):
    _client_args(p)


@command("shutdown", "emtl_stream.commands:shutdown", "stop a running daemon cleanly")
def _shutdown(p):
    _client_args(p)


@command("subscribe", "emtl_stream.commands:subscribe", "print published messages")
def _subscribe(p):
    _client_args(p, timeout_default=None)
    p.add_argument("topics", nargs="*", default=["pred", "event", "prompt"])
    p.add_argument("--count", type=_nonneg_int, default=0,
                   help="stop after N messages (0 = never)")


@command("warmup", "emtl_stream.commands:warmup",
         "compile or cache-load every numba kernel and report times")
def _warmup(p):
    p.add_argument("--clear-cache", action="store_true",
                   help="delete cached kernels first, so everything compiles from source")


@command("evaluate", "emtl_stream.evaluate:main",
         "offline evaluation on shared-format recordings")
def _evaluate(p):
    p.add_argument("data_dir", help="folder with ciil_es_sNN_{baseline,shifted}.npz files")
    p.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write a Markdown table")
    p.add_argument("--subjects", default=None, type=_id_list,
                   help="comma-separated subject ids (default all)")
    p.add_argument("--reference", action="store_true",
                   help="include the reference package (em-transfer-learning) if installed")
    p.add_argument("--speed", action="store_true",
                   help="evaluate proportional speed across the shift instead (docs/speed.md)")
    p.add_argument("--rotations", action="store_true",
                   help="virtual-rotation grid (fractional angles, gains) and the synthetic "
                        "armband instead (docs/evaluation.md)")
    p.add_argument("--unlabelled", action="store_true",
                   help="zero-label recalibration, optimal-transport and shift-detector rows")
    p.add_argument("--lead-in", type=_lead_in_seconds, default=0.0, metavar="SECONDS",
                   help="leave the first SECONDS (0-5) of every prompt out of the labelled "
                        "burst, as the daemon's [calibration] lead_in_s does (default 0)")


@command("bench", "emtl_stream.commands:bench", "run the benchmarks and print the tables")
def _bench(p):
    p.add_argument("--quick", action="store_true", help="a small subset (a few minutes)")


@command("ui", "emtl_stream.ui.server:main",
         "serve the patient and operator web page for a running daemon")
def _ui(p):
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="serve on this address (default [ui] address)")
    p.add_argument("--control", default=None, help="daemon control address (default from config)")
    p.add_argument("--pub", default=None, help="daemon publisher address (default from config)")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="emtl-stream", parents=[_common_flags(suppress=False)],
        description="Real-time EM transfer-learning calibration daemon for myoelectric control.",
        epilog="Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure.")
    parser.add_argument("--version", action="version", version=f"emtl_stream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = _common_flags(suppress=True)
    for name, (_, add_arguments, text) in _COMMANDS.items():
        add_arguments(sub.add_parser(name, help=text, description=text, parents=[common]))
    return parser


# --------------------------------------------------------------------------- liblsl's log
_LSL_QUIET = "[log]\nlevel = -3\n"  # loguru verbosity: -3 fatal only (errors are -2, info 0)


def _user_lsl_config() -> bool:
    """Return True when liblsl will find a config of the user's (which then decides its log)."""
    if os.environ.get("LSLAPICFG"):
        return True
    candidates = [Path("lsl_api.cfg"), Path.home() / "lsl_api" / "lsl_api.cfg",
                  Path("/etc/lsl_api/lsl_api.cfg")]
    return any(p.is_file() for p in candidates)


def quiet_liblsl(verbose: bool) -> None:
    """Silence liblsl's own stderr log unless ``verbose``.

    That log says ``Loaded default config``, ``Stream transmission broke off`` and so on.

    liblsl reads its log level once, when it loads, from the first readable of
    ``$LSLAPICFG``, ``./lsl_api.cfg``, ``~/lsl_api/lsl_api.cfg`` and
    ``/etc/lsl_api/lsl_api.cfg`` (``[log] level``, -3..9). When the user has none of
    these, point ``LSLAPICFG`` at a file that sets the level to fatal-only; a user's
    own file is left in charge. Must run before :mod:`pylsl` is imported; the
    variable is inherited by child processes.

    Parameters
    ----------
    verbose : bool
        Leave liblsl's log as it is.
    """
    if verbose or "pylsl" in sys.modules or _user_lsl_config():
        return
    path = Path(tempfile.gettempdir()) / f"emtl_stream-lsl-quiet-{os.getuid()}.cfg"
    try:
        if not path.is_file() or path.read_text() != _LSL_QUIET:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(_LSL_QUIET)
            os.replace(tmp, path)
    except OSError:  # an unwritable temp folder only costs the quiet log
        return
    os.environ["LSLAPICFG"] = str(path)


# --------------------------------------------------------------------------- main
def _exit_code(exc: BaseException) -> int:
    from .errors import ConfigError

    return EXIT_USAGE if isinstance(exc, (ConfigError, FileNotFoundError, IsADirectoryError,
                                          NotADirectoryError)) else EXIT_FAILURE


def _reason(exc: BaseException) -> str:
    from .errors import EmtlError

    text = str(exc) or type(exc).__name__
    if isinstance(exc, (EmtlError, OSError, TimeoutError, ConnectionError, ValueError,
                        RuntimeError)):
        return text
    return f"{type(exc).__name__}: {text}"


#: Commands that run the daemon in this process.
DAEMON_COMMANDS = ("run", "demo")
#: The BLAS libraries' thread-count variables, read once when numpy loads.
def main(argv=None) -> int:
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; default ``sys.argv[1:]``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.command in DAEMON_COMMANDS:
        from .daemon.blas import set_blas_environment

        set_blas_environment()
    quiet_liblsl(args.verbose)
    from .logs import set_log_level

    if args.verbose:
        set_log_level("INFO")
    module_name, func_name = _COMMANDS[args.command][0].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # one line for users, the traceback with --verbose
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"emtl-stream {args.command}: {_reason(exc)}", file=sys.stderr)
        return _exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
