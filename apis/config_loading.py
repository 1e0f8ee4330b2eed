"""Reading configs: YAML files (a path, or the name of a config shipped in ``apis/configs/``) with ``_base_``
chains and ``key=value`` overrides, checked against the schema (:mod:`apis.config`) so that a typo fails before
any work starts, with the full key and the allowed names::

    cfg = load_config("condinst_r18_cpu_dsb.yaml", ["solver.max_iter=200", "model.depth=18"])

Values in overrides are parsed as YAML (``a=[1,2]``, ``b=true``, ``c=0.5``). Stored configs carry
``config_version`` and are migrated when read (:mod:`apis.config_versions`); :func:`check_same_config` is how a
resumed run refuses a changed one.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import types
import typing
from collections.abc import Set
from pathlib import Path
from typing import Any, Literal

import yaml

from apis.config import ConfigError, ExperimentConfig, check_values, flat_config, to_dict, validate
from apis.config_versions import CONFIG_VERSION, MIGRATIONS, RENAMED, UNVERSIONED

BUILTIN_CONFIGS = Path(str(importlib.resources.files("apis") / "configs"))
"""The configs shipped with APIS (package data: they come with ``pip install``)."""


def builtin_configs() -> list[str]:
    """File names of the built-in configs, sorted."""
    return sorted(path.name for path in BUILTIN_CONFIGS.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """The config file ``path`` names: the file itself when it exists, else the built-in config with its file
    name (``.yaml`` may be left out). So ``condinst_r18_cpu_synth.yaml`` works from any directory, and a command
    written for a checkout (``configs/condinst_r18_cpu_synth.yaml``) works from an installed package.

    Raises:
        ConfigError: neither exists; the message lists the built-in configs.
    """
    path = Path(path)
    if path.is_file():
        return path
    name = path.name if path.suffix else f"{path.name}.yaml"
    if (BUILTIN_CONFIGS / name).is_file():
        return BUILTIN_CONFIGS / name
    raise ConfigError(f"config file not found: {path} (built-in configs: {', '.join(builtin_configs())})")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a dataclass field type, converting int->float and str->inf."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(annotation)
        if not any(type(value) is type(choice) and value == choice for choice in choices):  # 50.0, True: not 50, 1
            raise ConfigError(f"config key '{key}' is {value!r}; allowed values: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' has value {value!r} not of type {annotation}")
    if annotation is float:
        if isinstance(value, str) and value.lower() in ("inf", ".inf", "infinity"):
            return float("inf")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif annotation is type(None) and value is None:
        return None
    raise ConfigError(f"config key '{key}' expects {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            if full in RENAMED_KEYS:
                raise ConfigError(f"config key '{full}' is now '{RENAMED_KEYS[full]}'")
            raise ConfigError(f"unknown config key '{full}'; allowed keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_nested(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def override_key(item: str) -> str:
    """The key of one ``key=value`` override (``"solver.max_iter=100"`` -> ``"solver.max_iter"``)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. solver.max_iter=100)")
    return item.split("=", 1)[0].strip()


def merge_overrides(defaults: list[str], overrides: list[str]) -> list[str]:
    """``defaults`` without the keys that ``overrides`` sets, then ``overrides``: a script's (or a test's) own
    settings that its caller may replace, every key still given once."""
    replaced = {override_key(item) for item in overrides}
    return [item for item in defaults if override_key(item) not in replaced] + list(overrides)


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> nested dict, values parsed as YAML.

    Raises:
        ConfigError: an item is not ``key=value``, or a key is given twice (which of the two was meant cannot be
            told, so neither is applied silently).
    """
    tree: dict = {}
    given: dict[str, str] = {}
    for item in overrides:
        key = override_key(item)
        if key in given:
            raise ConfigError(f"config key '{key}' is given twice ('{given[key]}', then '{item}'); give it once")
        given[key] = item
        raw = item.split("=", 1)[1]
        _set_nested(tree, key, yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def migrate(values: dict, version: int) -> dict:
    """``values`` (a nested config dict written at ``version``) with the migrations since applied.

    Raises:
        ConfigError: ``version`` is not one this APIS knows.
    """
    if not (isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= CONFIG_VERSION):
        raise ConfigError(f"config_version {version!r} is not one this APIS reads (1..{CONFIG_VERSION}); "
                          "was it written by a newer APIS?")
    migrated = dict(values)
    for step in range(version, CONFIG_VERSION):
        for old, new in RENAMED.get(step, {}).items():
            _rename(migrated, old, new)
        for dotted, old_value in MIGRATIONS[step].items():
            *sections, key = dotted.split(".")
            node = migrated
            for section in sections:  # copies along the path: ``values`` is left as it was
                if not isinstance(node.get(section, {}), dict):
                    break  # not a mapping: building the config names the key
                node[section] = node = dict(node.get(section, {}))
            else:
                node.setdefault(key, old_value)
    return migrated


def _rename(values: dict, old: str, new: str) -> None:
    """Move the value at dotted ``old`` of nested ``values`` to ``new`` (copying every mapping it changes, so that
    the caller's dicts are left alone); nothing when ``old`` is absent."""
    *old_sections, old_key = old.split(".")
    node = values
    for section in old_sections:
        if not isinstance(node.get(section), dict):
            return
        node = node[section]
    if old_key not in node:
        return
    value = node[old_key]
    node = values
    for section in old_sections:
        node[section] = node = dict(node[section])
    del node[old_key]
    *new_sections, new_key = new.split(".")
    node = values
    for section in new_sections:
        if not isinstance(node.get(section, {}), dict):
            return  # not a mapping: building the config names the key
        node[section] = node = dict(node.get(section, {}))
    node.setdefault(new_key, value)


RENAMED_KEYS = {old: new for renames in RENAMED.values() for old, new in renames.items()}
"""Every key renamed since config versions began, to its name now (named when an old name is given)."""


def config_from_dict(values: dict, overrides: list[str] | None = None, default_version: int = CONFIG_VERSION
                     ) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested dict, then ``overrides``.

    ``values`` may carry ``config_version``; without one it is read as ``default_version`` (a stored config
    without it predates versioning: pass :data:`~apis.config_versions.UNVERSIONED`).
    """
    values = dict(values)
    values = migrate(values, values.pop("config_version", default_version))
    cfg = _build(ExperimentConfig, _merge(values, parse_overrides(overrides or [])))
    check_values(cfg)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config and apply overrides.

    ``path`` is a file or the name of a built-in config (:func:`find_config`); ``_base_: other.yaml`` chains
    are resolved relative to the file (then among the built-in configs). A file without ``config_version`` is
    read as written for this APIS.
    """
    if path is None:
        return config_from_dict({}, overrides)
    return _from_file(find_config(path), overrides, CONFIG_VERSION)


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a run stored (``config.yaml``), migrated to this APIS (no ``config_version``: version 1).

    Runs store absolute paths (:func:`absolute_paths`); a relative path in an older run's config is read, as
    that run read it, against the current directory.
    """
    return absolute_paths(_from_file(Path(path), overrides, UNVERSIONED))


# Config keys holding a path to a file or folder (docs/design.md, "Config versions"); model.backbone_weights
# also takes names ("none", "imagenet", a bundled file), which have neither a folder nor a file suffix.
PATH_KEYS = ("data.train_json", "data.val_json", "data.image_root", "data.val_image_root", "data.train_points",
             "loop.initial_run", "loop.points_from", "model.backbone_weights")


def absolute_paths(cfg: ExperimentConfig, base: str | Path | None = None) -> ExperimentConfig:
    """``cfg`` with every relative path of :data:`PATH_KEYS` made absolute against ``base`` (default: the
    current directory), so that a run's stored config means the same files from any directory."""
    base = Path.cwd() if base is None else Path(base)
    sections = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        is_path = key != "model.backbone_weights" or "/" in value or Path(value).suffix
        if value and is_path and not Path(value).is_absolute():
            sections.setdefault(section, {})[name] = os.path.normpath(base / value)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)
                                       for section, values in sections.items()})


def _from_file(path: Path, overrides: list[str] | None, default_version: int) -> ExperimentConfig:
    values = _read_yaml_with_base(path)
    try:
        return config_from_dict(values, overrides, default_version)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _read_yaml_with_base(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = find_config(path)
    if path.resolve() in chain:
        raise ConfigError(f"{path}: its _base_ chain comes back to it ({' -> '.join(map(str, chain))})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = values.pop("_base_", None)
    if base is not None:
        values = _merge(_read_yaml_with_base(path.parent / base, (*chain, path.resolve())), values)
    return values


def dump_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from apis.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


RESUMABLE_KEYS = frozenset({"output_dir", "device", "data.num_workers", "loop.steps", "solver.keep_checkpoints"})
"""Keys that may change between a run and its resumption: where it lives, what it runs on, more steps, and how
many checkpoints it keeps on disk."""


def config_differences(old: ExperimentConfig, new: ExperimentConfig, ignore: Set[str] = frozenset()
                       ) -> list[str]:
    """``"key: old -> new"`` for every key (dotted, sorted) whose value differs, except those in ``ignore``."""
    before, after = flat_config(old), flat_config(new)
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(before.keys() | after.keys())
            if key not in ignore and before.get(key) != after.get(key)]


def check_same_config(stored_path: str | Path, cfg: ExperimentConfig, may_change: Set[str] = RESUMABLE_KEYS
                      ) -> None:
    """Refuse to resume the run whose config is ``stored_path`` with a different ``cfg`` (nothing to do when
    the file does not exist yet). Keys in ``may_change`` may differ.

    Raises:
        ConfigError: naming the file and each changed key with its stored and its new value.
    """
    stored_path = Path(stored_path)
    if not stored_path.exists():
        return
    changed = config_differences(load_run_config(stored_path), cfg, may_change)
    if changed:
        raise ConfigError(f"{stored_path} was written by a run with a different config ({'; '.join(changed)}); "
                          f"resume with the same config or choose another output_dir")
