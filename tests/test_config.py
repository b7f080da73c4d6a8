"""Config: defaults in one place equal config/default.toml; errors name the key."""

from __future__ import annotations

from pathlib import Path
import re
import sys

import pytest

from emtl_stream.config import SECTIONS, Config, load_config
from emtl_stream.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

DEFAULT = REPO / "config" / "default.toml"


def test_default_toml_equals_dataclass_defaults_key_by_key():
    with open(DEFAULT, "rb") as fh:
        parsed = tomllib.load(fh)
    defaults = Config().to_dict()
    assert set(parsed) == set(defaults) == set(SECTIONS)
    for section, values in defaults.items():
        assert set(parsed[section]) == set(values), section
        for key, value in values.items():
            got = parsed[section][key]
            assert got == value and type(got) in (type(value),), f"{section}.{key}: {got!r} != {value!r}"


def test_every_key_in_default_toml_has_a_comment():
    section = None
    seen = 0
    for line in DEFAULT.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"\[(\w+)\]$", stripped)
        if m:
            section = m.group(1)
            continue
        key = stripped.split("=", 1)[0].strip()
        assert "#" in stripped.split("=", 1)[1], f"{section}.{key} has no comment"
        assert len(stripped.split("#", 1)[1].strip()) > 5, f"{section}.{key}: empty comment"
        seen += 1
    assert seen == sum(len(v) for v in Config().to_dict().values())


def test_loading_default_toml_gives_the_defaults():
    assert load_config(DEFAULT, env={}) == Config() == load_config(None, env={})


def test_unknown_key_names_section_key_and_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[transfer]\nregg = 2.0\n')
    with pytest.raises(ConfigError, match=r"transfer\.regg") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_unknown_section_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[zmqq]\npub = "x"\n')
    with pytest.raises(ConfigError, match=r"\[zmqq\]"):
        load_config(path, env={})


@pytest.mark.parametrize("text,key,expected", [
    ('[transfer]\nreg = "big"\n', "transfer.reg", "number"),
    ('[transfer]\nmax_iter = 2.5\n', "transfer.max_iter", "integer"),
    ('[stream]\nring = 1\n', "stream.ring", "boolean"),
    ('[features]\nnames = "mav"\n', "features.names", "list"),
    ('[zmq]\nmax_message_bytes = true\n', "zmq.max_message_bytes", "integer"),
])
def test_wrong_type_names_key_value_and_expected_type(tmp_path, text, key, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert key in msg and expected in msg and str(path) in msg
    value = tomllib.loads(text)[key.split(".")[0]][key.split(".")[1]]
    assert repr(value) in msg


@pytest.mark.parametrize("text,key", [
    ('[transfer]\nshrink_to = "nowhere"\n', "transfer.shrink_to"),
    ('[transfer]\nreg = -1.0\n', "transfer.reg"),
    ('[features]\nbandpass = [20.0]\n', "features.bandpass"),
    ('[features]\nstep_ms = 500.0\n', "features.step_ms"),
    ('[classify]\nreject_below = 1.5\n', "classify.reject_below"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(path, env={})


def test_integer_is_accepted_for_a_float_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[transfer]\nreg = 2\n")
    cfg = load_config(path, env={})
    assert cfg.transfer.reg == 2.0 and isinstance(cfg.transfer.reg, float)


def test_missing_file_and_bad_toml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    bad = tmp_path / "broken.toml"
    bad.write_text("[stream\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_environment_overrides_are_toml_values(tmp_path):
    env = {
        "EMTL_ZMQ_PUB": "tcp://127.0.0.1:6001",          # bare string accepted
        "EMTL_TRANSFER_REG": "0.25",
        "EMTL_FEATURES_NAMES": '["mav", "wl"]',
        "EMTL_STREAM_RING": "false",
        "EMTL_MODEL_PATH": '"model.npz"',               # quoted string as in README
        "EMTL_EMG_DATA": "/elsewhere",                   # not a config section: ignored
        "EMTL_RAISE_BACKGROUND_ERRORS": "1",
        "OTHER": "x",
    }
    path = tmp_path / "c.toml"
    path.write_text('[transfer]\nreg = 3.0\nmax_iter = 7\n')
    cfg = load_config(path, env=env)
    assert cfg.zmq.pub == "tcp://127.0.0.1:6001"
    assert cfg.transfer.reg == 0.25 and cfg.transfer.max_iter == 7  # env beats file
    assert cfg.features.names == ["mav", "wl"]
    assert cfg.stream.ring is False
    assert cfg.model.path == "model.npz"


def test_environment_errors_name_the_variable():
    with pytest.raises(ConfigError, match="EMTL_TRANSFER_REGG"):
        load_config(None, env={"EMTL_TRANSFER_REGG": "1"})
    with pytest.raises(ConfigError, match=r"transfer\.reg"):
        load_config(None, env={"EMTL_TRANSFER_REG": "lots"})
    with pytest.raises(ConfigError, match=r"stream\.ring"):
        load_config(None, env={"EMTL_STREAM_RING": "1"})


def test_an_unknown_section_in_the_environment_is_an_error_naming_the_closest_variable():
    with pytest.raises(ConfigError, match=r"EMTL_TRANSFR_REG.*did you mean EMTL_TRANSFER_REG\?"):
        load_config(None, env={"EMTL_TRANSFR_REG": "1"})
    with pytest.raises(ConfigError, match=r"EMTL_STREEM_NAME.*EMTL_STREAM_NAME"):
        load_config(None, env={"EMTL_STREEM_NAME": '"x"'})
    with pytest.raises(ConfigError, match=r"EMTL_XQZJKW.*sections stream"):
        load_config(None, env={"EMTL_XQZJKW": "1"})


def test_documented_other_variables_pass_and_every_key_has_its_variable():
    from emtl_stream.config import ENV_OTHER, env_names

    env = {name: "x" for name in ENV_OTHER}
    env["EMTL_LOG_LEVEL"] = "INFO"  # a config key too: [log] level
    assert load_config(None, env=env).log.level == "INFO"
    names = env_names()
    # derived from the dataclasses: one variable per key, each mapping back to it
    assert len(names) == sum(len(v) for v in Config().to_dict().values())
    for name, (sec, key) in names.items():
        assert name == f"EMTL_{sec.upper()}_{key.upper()}"
        assert key in Config().to_dict()[sec]
    readme = (REPO / "README.md").read_text()
    for name in ENV_OTHER:
        assert name in readme, f"{name} is not documented in the README"


def test_config_is_frozen_and_replace_validates():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.zmq.pub = "x"  # type: ignore[misc]
    new = cfg.replace(zmq={"pub": "tcp://127.0.0.1:1"})
    assert new.zmq.pub == "tcp://127.0.0.1:1" and cfg.zmq.pub != new.zmq.pub
    with pytest.raises(ConfigError, match=r"zmq\.pubb"):
        cfg.replace(zmq={"pubb": "x"})


def test_to_dict_round_trips_through_toml_text():
    cfg = Config()
    d = cfg.to_dict()
    d["features"]["names"].append("rms")  # a copy: the config is not changed
    assert "rms" not in cfg.features.names
