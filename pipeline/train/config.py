"""YAML run configs read into the dataclasses their owners define, with errors that say the fix.

A run config is a YAML mapping of sections (``model:``, ``loader:``, ...). Each section maps onto
one dataclass that lives beside the class it configures; this module only reads, merges and checks.

    cfg = load_config("launch/configs/pretrain.yaml", PretrainConfig, ["train.steps=100"])

Unknown keys are refused with the valid ones (and the closest match) listed, so a typo never
silently trains with a default. A run config class may name keys its job sets itself
(``SET_BY_JOB = {"loader.batch_size": "why, and what to set instead"}``): they are refused in
user configs and left out of what a run saves (:func:`saved_dict`), so ``RUN/config.yaml``
loads back as ``--config`` for the same job.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path

import yaml

from preprocessing.format import SonostreamError


def _fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value, hint, where: str):
    """YAML value -> the field's type (tuples from lists, floats from ints); else a clear error."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SonostreamError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):   # YAML 1.1 reads 5e-4 (no dot) as text
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise SonostreamError(f"{where} must be {hint.__name__}, got {value!r}")
    return value


def from_dict(cls, data, where: str = "config"):
    """Build dataclass ``cls`` from a mapping; nested dataclass fields are sections."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SonostreamError(f"{where} must be a mapping of keys, got {data!r}")
    fields = _fields(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        raise SonostreamError(f"unknown config key {where}.{k}{_suggest(k, fields)}; valid keys in "
                              f"{where}: {', '.join(fields)}")
    return cls(**{k: _coerce(v, fields[k], f"{where}.{k}") for k, v in data.items()})


def _parse_override(item: str):
    if "=" not in item:
        raise SonostreamError(f"--set {item!r}: write SECTION.KEY=VALUE, e.g. --set "
                              f"train.steps=100")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def load_config(path, cls, overrides=()):
    """Read YAML ``path`` (or start from defaults when None), apply ``SECTION.KEY=VALUE`` overrides."""
    data = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SonostreamError(f"config file {p} does not exist (see launch/configs/ for "
                                  f"examples)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise SonostreamError(f"config file {p} is not valid YAML: {e}") from None
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise SonostreamError(f"--set {item!r}: {k} is not a section")
        node[keys[-1]] = value
    for key, why in getattr(cls, "SET_BY_JOB", {}).items():
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            raise SonostreamError(f"{key} (in {path or 'the config'} or --set) {why}")
    try:
        return from_dict(cls, data, where="config")
    except TypeError as e:  # a dataclass __post_init__ or a missing required field
        raise SonostreamError(f"{path}: {e}") from None


def to_dict(cfg) -> dict:
    """Dataclass -> plain dict (tuples as lists), fit for YAML, JSON and tracker hyperparameters."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def saved_dict(cfg) -> dict:
    """What a run saves as its config (``RUN/config.yaml``, trackers, checkpoints): ``to_dict``
    without the keys the job sets itself (``SET_BY_JOB``), so it is valid as ``--config``."""
    d = to_dict(cfg)
    for key in getattr(type(cfg), "SET_BY_JOB", {}):
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    return d


def pick(cfg, keys) -> dict:
    """The values of dotted ``keys`` of a run config (a section name takes every key in it):
    ``pick(cfg, ["model", "loader.clip_len"])`` -> ``{"model.arch": ..., "loader.clip_len": 4}``."""
    out = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if dataclasses.is_dataclass(node):
            out.update({f"{key}.{k}": v for k, v in to_dict(node).items()})
        else:
            out[key] = list(node) if isinstance(node, tuple) else node
    return out


def flat(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become strings (TensorBoard hparams take scalars)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v) if isinstance(v, list) or v is None else v
    return out
