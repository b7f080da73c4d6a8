"""Typed configuration: one frozen dataclass per TOML section.

The defaults live here and only here; ``config/default.toml`` restates them with a
comment per key, and a test keeps the two equal key by key. Loading order:

1. dataclass defaults,
2. the TOML file (if given),
3. ``EMTL_<SECTION>_<KEY>`` environment variables, each parsed as a TOML value
   (``EMTL_TRANSFER_REG=0.5``, ``EMTL_MODEL_CLASSES='["rest", "fist"]'``). A value
   that is not valid TOML is taken as a bare string when the key is a string
   (``EMTL_ZMQ_PUB=tcp://127.0.0.1:6000`` works without quotes). Any other
   ``EMTL_*`` variable is an error naming the closest config variable, except the
   few the package reads for other purposes (:data:`ENV_OTHER`).

Unknown sections or keys are a :class:`~emtl_stream.errors.ConfigError` naming
``section.key`` and the file; so is a value of the wrong type (naming the key, the
value and the expected type) or out of range. Relative paths (``[model] path``,
``[state] dir``, ``[log] file``) are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "EMTL_"


def _opt(default, *, choices=None, minimum=None, maximum=None, positive=False, length=None):
    """Make a dataclass field whose metadata carries its validation rule."""
    meta = {"choices": choices, "minimum": minimum, "maximum": maximum, "positive": positive,
            "length": length}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class StreamConfig:
    """``[stream]``: which LSL stream to read and how to watch it."""

    name: str = _opt("")
    type: str = _opt("EMG")
    source_id: str = _opt("")
    resolve_timeout_s: float = _opt(2.0, positive=True)
    max_buflen_s: int = _opt(2, minimum=1)
    lost_after_s: float = _opt(1.0, positive=True)
    channels: int = _opt(0, minimum=0)
    rate: float = _opt(0.0, minimum=0.0)
    ring: bool = _opt(True)
    labels_stream: str = _opt("")
    max_abs_sample: float = _opt(1e9, minimum=0.0)


@dataclass(frozen=True)
class FeaturesConfig:
    """``[features]``: windowing, filters and per-channel features."""

    names: list[str] = _opt(["mav", "wl", "zc", "ssc"])
    window_ms: float = _opt(200.0, positive=True)
    step_ms: float = _opt(50.0, positive=True)
    zc_threshold: float = _opt(0.0, minimum=0.0)
    ssc_threshold: float = _opt(0.0, minimum=0.0)
    bandpass: list[float] = _opt([], length=(0, 2))
    notch: float = _opt(0.0, minimum=0.0)


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the source model (file, or how to train one in a session)."""

    path: str = _opt("")
    classes: list[str] = _opt([])
    kind: str = _opt("lgmm", choices=("lgmm", "gmlvq", "lgmlvq"))
    covariance_type: str = _opt("tied", choices=("full", "tied", "diag", "tied_diag",
                                                 "spherical", "tied_spherical"))
    n_components_per_class: int = _opt(1, minimum=1)


@dataclass(frozen=True)
class TransferConfig:
    """``[transfer]``: transfer-EM settings for recalibration."""

    reg: float = _opt(0.1, minimum=0.0)
    reg_scale: str = _opt("relative", choices=("relative", "absolute"))
    structure: str = _opt("channel", choices=("channel", "dense"))
    shrink_to: str = _opt("current", choices=("current", "identity", "zero"))
    bias: bool = _opt(False)
    ring_search: bool = _opt(True)
    rotation_search: str = _opt("roll", choices=("roll", "continuous"))
    guard: str = _opt("auto", choices=("auto", "on", "off"))
    max_iter: int = _opt(100, minimum=1, maximum=10000)
    tol: float = _opt(1e-6, positive=True)
    kind: str = _opt("auto")


@dataclass(frozen=True)
class CalibrationConfig:
    """``[calibration]``: the prompted burst."""

    seconds_per_class: float = _opt(1.0, positive=True)
    train_seconds_per_class: float = _opt(5.0, positive=True)
    ramp_seconds_per_class: float = _opt(4.0, positive=True)
    repetitions: int = _opt(1, minimum=1)
    lead_in_s: float = _opt(0.5, minimum=0.0)
    rest_s: float = _opt(1.0, minimum=0.0)
    min_windows_per_class: int = _opt(2, minimum=1)
    classes: list[str] = _opt([])
    markers_outlet: bool = _opt(False)


@dataclass(frozen=True)
class ClassifyConfig:
    """``[classify]``: what happens to each window's posterior."""

    reject_below: float = _opt(0.0, minimum=0.0, maximum=1.0)
    vote_windows: int = _opt(1, minimum=1)
    shift_detect: bool = _opt(True)
    stale_after_s: float = _opt(1.0, positive=True)


@dataclass(frozen=True)
class AdaptConfig:
    """``[adapt]``: zero-label recalibration (no prompts, no labels)."""

    # 20 s: the guard splits the windows into halves that must each pin the roll;
    # the offline replay of the automatic mode on the 18 recordings used about 20 s.
    seconds: float = _opt(20.0, positive=True, maximum=30.0)
    auto: bool = _opt(False)
    cooldown_s: float = _opt(120.0, minimum=0.0, maximum=86400.0)


@dataclass(frozen=True)
class ZmqConfig:
    """``[zmq]``: sockets, message size limit and CURVE keys."""

    pub: str = _opt("tcp://127.0.0.1:5556")
    control: str = _opt("tcp://127.0.0.1:5557")
    publish_features: bool = _opt(True)
    max_message_bytes: int = _opt(65536, minimum=64)
    allow_remote: bool = _opt(False)
    curve_server_secret: str = _opt("")
    curve_server_public: str = _opt("")
    curve_authorized_clients_dir: str = _opt("")
    curve_client_secret: str = _opt("")
    curve_client_public: str = _opt("")


@dataclass(frozen=True)
class StateConfig:
    """``[state]``: where models, maps and bursts are persisted."""

    dir: str = _opt("state")


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: package log level and optional file."""

    level: str = _opt("WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    file: str = _opt("")


@dataclass(frozen=True)
class UiConfig:
    """``[ui]``: the local web page of ``emtl-stream ui``."""

    address: str = _opt("127.0.0.1:5558")
    allow_remote: bool = _opt(False)


@dataclass(frozen=True)
class SpeedConfig:
    """``[speed]``: proportional speed published with every prediction (docs/speed.md)."""

    measure: str = _opt("mav", choices=("mav", "rms", "log_mav"))
    low_percentile: float = _opt(10.0, minimum=0.0, maximum=100.0)
    high_percentile: float = _opt(70.0, minimum=0.0, maximum=100.0)
    deadband: float = _opt(0.05, minimum=0.0, maximum=0.95)
    smoothing: str = _opt("mean2", choices=("mean2", "none"))
    amplitude: str = _opt("mapped", choices=("mapped", "raw"))


SECTIONS: dict[str, type] = {
    "stream": StreamConfig,
    "features": FeaturesConfig,
    "model": ModelConfig,
    "transfer": TransferConfig,
    "calibration": CalibrationConfig,
    "classify": ClassifyConfig,
    "adapt": AdaptConfig,
    "zmq": ZmqConfig,
    "state": StateConfig,
    "log": LogConfig,
    "ui": UiConfig,
    "speed": SpeedConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole configuration; one attribute per section (``config.zmq.pub``).

    ``source`` records where it came from (a file path or ``"<defaults>"``).
    """

    stream: StreamConfig = field(default_factory=StreamConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    zmq: ZmqConfig = field(default_factory=ZmqConfig)
    state: StateConfig = field(default_factory=StateConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    source: str = field(default="<defaults>", compare=False)

    def to_dict(self) -> dict:
        """Plain nested dict ``{section: {key: value}}`` (lists copied), TOML-compatible."""
        return {name: {f.name: _copy(getattr(getattr(self, name), f.name))
                       for f in dataclasses.fields(cls)}
                for name, cls in SECTIONS.items()}

    def replace(self, **sections: Mapping[str, Any]) -> "Config":
        """Return a copy with some keys changed: ``cfg.replace(zmq={"pub": "tcp://..."})``.

        Values are validated exactly as in a file.

        Parameters
        ----------
        **sections : mapping
            ``section=`` a mapping of the keys to change.
        """
        data = self.to_dict()
        for sec, values in sections.items():
            if sec not in SECTIONS:
                raise ConfigError(f"unknown config section [{sec}] in replace(); known sections: "
                                  f"{', '.join(SECTIONS)}.")
            data[sec].update(values)
        return from_dict(data, source=self.source)


def _copy(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _type_name(tp) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _coerce(section: str, f: dataclasses.Field, value, where: str):
    """Validate one value against its field; return it in canonical form."""
    key = f"{section}.{f.name}"
    tp = f.type if not isinstance(f.type, str) else eval_type(f.type)
    meta = f.metadata

    def bad(expected):
        return ConfigError(f"{key} in {where} must be {expected}, got {type(value).__name__} "
                           f"{value!r}.")

    if tp is bool:
        if not isinstance(value, bool):
            raise bad("a boolean (true or false)")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
        if not math.isfinite(value):
            raise bad("a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise bad("a string")
    elif tp in ("list[str]", "list[float]"):
        inner = str if tp == "list[str]" else float
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {_type_name(inner)}s")
        out = []
        for item in value:
            if inner is str and not isinstance(item, str):
                raise bad("a list of strings")
            if inner is float:
                if isinstance(item, bool) or not isinstance(item, (int, float)) or \
                        not math.isfinite(item):
                    raise bad("a list of finite numbers")
                item = float(item)
            out.append(item)
        value = out
        if meta.get("length") is not None and len(value) not in meta["length"]:
            raise bad(f"a list of length {' or '.join(map(str, meta['length']))}")
    else:  # pragma: no cover - a field type added without a rule
        raise TypeError(f"no validation rule for {key} of type {tp}")

    if meta.get("choices") is not None:
        choices = meta["choices"]
        v = value.upper() if f.name == "level" else value
        if v not in choices:
            raise ConfigError(f"{key} in {where} must be one of {list(choices)}, got {value!r}.")
        value = v
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ConfigError(f"{key} in {where} must be >= {meta['minimum']}, got {value!r}.")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ConfigError(f"{key} in {where} must be <= {meta['maximum']}, got {value!r}.")
    if meta.get("positive") and not value > 0:
        raise ConfigError(f"{key} in {where} must be > 0, got {value!r}.")
    return value


def eval_type(name: str):
    """Map the string annotations of this module (``from __future__ import annotations``).

    Parameters
    ----------
    name : str
        A type annotation as written.
    """
    return {"str": str, "int": int, "float": float, "bool": bool}.get(name, name)


def _field_map(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Build a :class:`Config` from ``{section: {key: value}}``; missing keys get defaults.

    Parameters
    ----------
    data : mapping
        ``{section: {key: value}}``.
    source : str
        Where the data came from, for error messages.

    Raises
    ------
    ConfigError
        Unknown section or key (named as ``section.key`` with ``source``), wrong type or
        out-of-range value.
    """
    sections = {}
    for sec, values in data.items():
        if sec not in SECTIONS:
            raise ConfigError(f"unknown config section [{sec}] in {source}; known sections: "
                              f"{', '.join(SECTIONS)}.")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{sec}] in {source} must be a table of keys, got {values!r}.")
        fields = _field_map(SECTIONS[sec])
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {sec}.{key} in {source}; [{sec}] knows: "
                                  f"{', '.join(fields)}.")
            kwargs[key] = _coerce(sec, fields[key], value, source)
        sections[sec] = SECTIONS[sec](**kwargs)
    cfg = Config(**sections, source=source)
    _check_consistency(cfg, source)
    return cfg


def _check_consistency(cfg: Config, source: str) -> None:
    f = cfg.features
    if f.step_ms > f.window_ms:
        raise ConfigError(f"features.step_ms ({f.step_ms}) in {source} must not exceed "
                          f"features.window_ms ({f.window_ms}); windows would skip samples.")
    if f.bandpass and not 0 < f.bandpass[0] < f.bandpass[1]:
        raise ConfigError(f"features.bandpass in {source} must be [low, high] with "
                          f"0 < low < high (Hz), got {f.bandpass!r}.")
    sp = cfg.speed
    if not sp.low_percentile < sp.high_percentile:
        raise ConfigError(f"speed.low_percentile ({sp.low_percentile}) in {source} must be "
                          f"below speed.high_percentile ({sp.high_percentile}).")
    z = cfg.zmq
    if bool(z.curve_server_secret) != bool(z.curve_server_public):
        raise ConfigError(f"zmq.curve_server_secret and zmq.curve_server_public in {source} "
                          "must be set together (generate both with zmq.curve_keypair()).")
    host, _, port = cfg.ui.address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"ui.address in {source} must be 'host:port' with a port in 0..65535 "
                          f"(e.g. '127.0.0.1:5558'), got {cfg.ui.address!r}.")


def _parse_env_value(raw: str, f: dataclasses.Field, name: str, key: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if eval_type(f.type) is str:
            return raw  # a bare string such as tcp://127.0.0.1:5556
        raise ConfigError(f"environment variable {name}={raw!r} (config key {key}) is not a TOML "
                          f"value ({exc}); expected {_type_name(eval_type(f.type))}.") from exc


# EMTL_* variables that are not config keys: read by other parts of the project
# (listed in the README's configuration section). Every other EMTL_* variable must
# name a config key.
ENV_OTHER = {
    "EMTL_EMG_DATA": "folder of the CIIL electrode-shift recordings (tests, evaluation)",
    "EMTL_RAISE_BACKGROUND_ERRORS": "1: background-thread errors raise instead of being "
                                    "logged (tests)",
    "EMTL_SCREENSHOTS": "folder the browser tests of `emtl-stream ui` save screenshots to "
                        "(tests)",
}


def env_names() -> dict[str, tuple[str, str]]:
    """Map every config key's environment variable to its section and key.

    Derived from the section dataclasses: ``{"EMTL_TRANSFER_REG": ("transfer",
    "reg"), ...}``.
    """
    return {f"{ENV_PREFIX}{sec.upper()}_{f.name.upper()}": (sec, f.name)
            for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``EMTL_<SECTION>_<KEY>`` variables as ``{section: {key: value}}``.

    An ``EMTL_*`` variable that names no config key and is not one of
    :data:`ENV_OTHER` is an error naming the closest known variable, so a typo in
    the section (``EMTL_TRANSFR_REG``) fails as loudly as one in the key.
    """
    import difflib

    known = env_names()
    out: dict[str, dict[str, Any]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_OTHER:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, list(known) + list(ENV_OTHER), n=1,
                                              cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else (
                f"; config variables are {ENV_PREFIX}<SECTION>_<KEY> with sections "
                f"{', '.join(SECTIONS)}")
            raise ConfigError(f"unknown environment variable {name}: it names no config key"
                              f"{hint} (other {ENV_PREFIX}* variables: {', '.join(ENV_OTHER)})")
        sec, key = known[name]
        field_ = _field_map(SECTIONS[sec])[key]
        out.setdefault(sec, {})[key] = _parse_env_value(raw, field_, name, f"{sec}.{key}")
    return out


def load_config(path: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Load the configuration.

    Parameters
    ----------
    path : path-like, optional
        A TOML file. ``None`` means the defaults (which equal ``config/default.toml``).
    env : mapping, optional
        Environment to take ``EMTL_<SECTION>_<KEY>`` overrides from; default
        ``os.environ``. Pass ``{}`` to ignore the environment.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, unknown key, wrong type or value.
    """
    env = os.environ if env is None else env
    data: dict[str, dict[str, Any]] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {source}: {exc}") from exc
    base = from_dict(data, source=source)  # file errors name the file
    overrides = _env_overrides(env)
    if not overrides:
        return base
    merged = base.to_dict()
    for sec, values in overrides.items():
        merged[sec].update(values)
    desc = ", ".join(f"{ENV_PREFIX}{s.upper()}_{k.upper()}"
                     for s, v in overrides.items() for k in v)
    return from_dict(merged, source=f"{source} + environment ({desc})")


def default_toml_path() -> Path:
    """``config/default.toml`` of a source checkout (may not exist in an installed wheel)."""
    return Path(__file__).resolve().parents[1] / "config" / "default.toml"
