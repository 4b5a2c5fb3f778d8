"""Parsing ``scale/train.py``'s command line and recipes into a :class:`ncakit.scale.config.TrainConfig`.

Precedence: the dataclass defaults < the YAML recipe given with ``--config`` < command-line flags::

    accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py \\
        --config scale/recipes/tiny-cpu.yaml --output_dir out/run --loss dpo --pairwise_from_k best_vs_random

The parser is transformers' ``HfArgumentParser`` (what TRL's ``TrlParser`` builds on), built from
the dataclass: ``--help`` shows each field's doc and default, ``--no_key`` turns off a boolean that
defaults to true, ``--key-with-dashes`` works, list keys take several values, TRL's names are
aliases (``--loss_type`` for ``--loss``), and ``--config`` is read as TrlParser reads it (the
recipe's values become the parser's defaults). ncakit's layer on top (:func:`config_parser`):
every key is checked -- an unknown key (in the YAML or on the command line) raises ``ValueError``
naming it and the closest known key, or why a TRL key has no meaning here; a value of the wrong type
raises ``TypeError`` naming the key, the expected type and, for keys with a fixed set of values, the
allowed values (argparse would print its usage and exit). Values are parsed by the key's type
(:func:`coerce_value`: ``true``/``false`` for booleans, ``none``/``null`` for optional keys,
``a,b,c``, ``a b c`` or ``[a, b]`` for lists, ``{alpha: 0.1}`` for mappings); numbers written as
``5e-6`` in YAML (a string for YAML 1.1) are accepted for float keys; NaN and infinities are refused.
The cross-field checks run after parsing (:meth:`TrainConfig.validate`).

``python scale/train.py --help`` lists every key with its default and meaning.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ncakit.scale.config import TrainConfig

__all__ = [
    "parse_config",
    "config_parser",
    "config_help",
    "load_yaml_config",
    "coerce_value",
    "debug_requested",
]


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", "~", ""}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _allowed(tp) -> str:
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = []
    for a in typing.get_args(tp) if union else (tp,):
        if typing.get_origin(a) is Literal:
            args += list(typing.get_args(a))
        elif a is type(None):
            args.append(None)
        elif a is bool and union:  # e.g. prompt_sharing: auto | true | false lists all three
            args += [True, False]
    return f"; allowed values: {args}" if args else ""


def coerce_value(name: str, value: Any, tp, *, from_cli: bool = False) -> Any:
    """``value`` converted to the annotated type ``tp`` of key ``name``, or TypeError naming the key,
    the expected type and the allowed values. Command-line strings are parsed by type."""

    def fail():
        shown = repr(value) if not isinstance(value, str) or len(value) < 80 else repr(value[:77] + "...")
        raise TypeError(
            f"{name}: expected {_type_name(tp)}, got {type(value).__name__} {shown}{_allowed(tp)}"
        ) from None

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        ):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce_value(name, value, a, from_cli=from_cli)
            except TypeError:
                continue
        fail()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        fail()
    if tp is int:
        if isinstance(value, bool):
            fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    fail()
                if f.is_integer():
                    return int(f)
        fail()
    if tp is float:
        if isinstance(value, bool):
            fail()
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "5e-6" as a string; the CLI gives strings
            try:
                out = float(value.strip())
            except ValueError:
                fail()
        else:
            fail()
        if not math.isfinite(out):  # nan compares False with everything: it would pass every range check
            raise ValueError(f"{name}: expected a finite float, got {value!r}") from None
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if from_cli:
            return str(value)
        fail()
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import yaml

                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    fail()
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            fail()
        return [coerce_value(f"{name}[{i}]", v, item, from_cli=from_cli) for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            import yaml

            try:
                value = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                fail()
            if value is None:
                value = {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail()
        return dict(value)
    raise TypeError(f"{name}: unsupported annotation {tp!r}")  # pragma: no cover - a bug in TrainConfig


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _unknown_key(key: str, where: str) -> ValueError:
    from ncakit.scale.trl_names import no_meaning_here

    trl = no_meaning_here(key, where)
    if trl is not None:
        return trl
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{key}: unknown key in {where}{hint}; `scale/train.py --help` lists the keys")


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """A recipe file -> ``{key: typed value}`` (unknown keys and bad types raise, naming the key)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: no such recipe file {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:  # name the recipe and the line, not "<unicode string>"
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"config: expected a YAML mapping of key: value in {where}, got a syntax error ({problem})"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"config: expected a UTF-8 text recipe in {path}, got undecodable bytes ({err.reason})"
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"config: {path} must hold a mapping of key: value, got {type(raw).__name__}")
    types_ = _field_types()
    out = {}
    names: dict[str, str] = {}
    for given, value in raw.items():
        key = _canonical(str(given), names, str(path))
        if key not in types_:
            raise _unknown_key(str(given), str(path))
        if key == "resume_from" and isinstance(value, bool):  # resume_from_checkpoint: true (HF)
            value = str(value).lower()
        out[key] = coerce_value(key, value, types_[key])
    return out


def _canonical(given: str, seen: dict, where: str) -> str:
    """ncakit's key for ``given`` (a TRL alias maps to its ncakit key); the same setting given twice
    in one place, under both names, is an error."""
    from ncakit.scale.trl_names import canonical_key

    key = canonical_key(given)
    first = seen.get(key)
    if first is not None and first != given:
        trl, ours = (given, first) if key != given else (first, given)
        raise ValueError(f"{trl}: TRL's name for {ours}, which {where} sets too; keep one of them")
    seen[key] = given
    return key


def _config_path(argv: list[str]) -> str | None:
    """The recipe given with ``--config PATH`` / ``--config=PATH`` (TrlParser's rule), or None."""
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config":
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if not nxt or nxt.startswith("--"):
                raise ValueError("config: expected a recipe path after --config")
            path = nxt
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
    return path


def _check_one_name_per_key(argv: list[str]) -> None:
    """A setting given under both its TRL name and ncakit's on one command line is an error
    (argparse would keep the last one silently)."""
    from ncakit.scale.trl_names import canonical_key

    names = _field_types()
    seen: dict[str, str] = {}
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            given = arg[2:].partition("=")[0].replace("-", "_")
            if canonical_key(given) in names:
                _canonical(given, seen, "the command line")


def _metavar(tp) -> str:
    """How ``--help`` shows a key's value: ``FLOAT``, ``{nca,dpo}``, ``INT|none``, ``MAPPING``..."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        shown = "|".join(_metavar(a) for a in args if a is not type(None))
        return shown + ("|none" if type(None) in args else "")
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin is list:
        return _metavar(typing.get_args(tp)[0])
    if origin is dict:
        return "MAPPING"
    return getattr(tp, "__name__", str(tp)).upper()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)" after each key's help, unless the help already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


@functools.cache
def _parser_class():
    """:class:`TrainConfigParser`, built on first use (importing transformers takes ~2 s)."""
    from transformers import HfArgumentParser

    from ncakit.scale.trl_names import ALIASES

    class TrainConfigParser(HfArgumentParser):
        """transformers' ``HfArgumentParser`` over :class:`TrainConfig` -- the parser TRL's
        ``TrlParser`` builds on: one ``--key`` per field (``--key-with-dashes`` too), ``--no_key``
        for booleans that default to true, a bare ``--flag`` meaning true, list keys taking several
        values (``--lora_target_modules q_proj v_proj``), ``--help`` from the field docs with the
        defaults, and ``--config RECIPE.yaml`` as TrlParser reads it (the recipe's values become the
        parser's defaults; flags override them).

        ncakit's layer on top, and why it is not the library's: every value is parsed by
        :func:`coerce_value` (``none`` for optional keys, ``a,b`` or ``[a, b]`` lists, YAML mappings,
        ``5e-6`` floats, non-finite floats refused), so a bad value is ONE line naming the key, the
        expected type and the allowed values, raised as TypeError / ValueError, where argparse would
        print its usage and exit; an unknown key gets a did-you-mean or the reason a TRL key has no
        meaning here (:mod:`ncakit.scale.trl_names`); TRL's names are aliases of ncakit's keys
        (``--loss_type`` for ``--loss``); and the cross-field checks run after parsing
        (:meth:`TrainConfig.validate`).
        """

        def __init__(self):
            self._type_error: Exception | None = None
            super().__init__(
                TrainConfig,
                prog="scale/train.py",
                usage="accelerate launch [--config_file scale/accelerate/<cfg>.yaml] scale/train.py "
                "[--config RECIPE.yaml] [--key value ...]",
                description="Keys (defaults < recipe < command line). Every key is checked before "
                "anything is loaded; TRL's names are accepted beside ncakit's.",
                formatter_class=_HelpFormatter,
                allow_abbrev=False,  # --lr must not silently mean --lr_scheduler_type
                exit_on_error=False,
            )
            self.add_argument(
                "--config", metavar="RECIPE.yaml", help="a YAML recipe of key: value (below the command line)"
            )
            self.add_argument(
                "--debug",
                nargs="?",
                const="true",
                metavar="true|false",
                help="show the full traceback of a configuration or data error instead of one line "
                "(or the environment variable NCAKIT_DEBUG=1)",
            )
            types_ = _field_types()
            for action in self._actions:
                tp = types_.get(action.dest)
                if tp is None or action.nargs == 0:  # --help, --config, the --no_key complements
                    continue
                action.type = self._typed(action.dest, tp)
                action.metavar = _metavar(tp)
                action.choices = None  # coerce_value checks them, with none for optional keys

        @staticmethod
        def _parse_dataclass_field(parser, field):
            field = copy.copy(field)  # HfArgumentParser narrows field.type in place
            aliases = [f"--{trl}" for trl, ours in ALIASES.items() if ours == field.name]
            field.metadata = types.MappingProxyType({**field.metadata, "aliases": aliases})
            args = typing.get_args(field.type)
            if typing.get_origin(field.type) in (typing.Union, types.UnionType) and not (
                str in args or (len(args) == 2 and type(None) in args)
            ):
                field.type = str  # a union argparse cannot hold (auto|bool): coerce_value parses it
            HfArgumentParser._parse_dataclass_field(parser, field)

        def _typed(self, name: str, tp):
            def parse(text: str):
                try:
                    return coerce_value(name, text, tp, from_cli=True)
                except (TypeError, ValueError) as err:
                    self._type_error = err  # re-raised as is by parse_config_args
                    raise argparse.ArgumentTypeError(str(err)) from None

            parse.__name__ = _metavar(tp)
            return parse

        def parse_config_args(self, argv: list[str]) -> TrainConfig:
            """``argv`` (flags, over the defaults set from a recipe) -> an unchecked :class:`TrainConfig`."""
            self._type_error = None
            # argparse takes "-inf", "-1e-5" for options: a value after --key is a value unless it
            # starts with "--" (the rule of the command lines in the docs)
            joined: list[str] = []
            for arg in argv:
                if (
                    joined
                    and arg.startswith("-")
                    and not arg.startswith("--")
                    and arg != "-h"
                    and joined[-1].startswith("--")
                    and "=" not in joined[-1]
                ):
                    joined[-1] = f"{joined[-1]}={arg}"
                else:
                    joined.append(arg)
            try:
                ns, rest = self.parse_known_args(joined)
            except argparse.ArgumentError as err:
                if self._type_error is not None:
                    raise self._type_error from None
                raise self._argument_error(err) from None
            if rest:
                arg = rest[0]
                if arg.startswith("--") and arg != "--":
                    raise _unknown_key(arg[2:].partition("=")[0], "the command line")
                raise ValueError(
                    f"{arg}: expected --key value (or --key=value); positional arguments are not used"
                )
            types_ = _field_types()
            values = {}
            for name, tp in types_.items():
                value = getattr(ns, name)
                if typing.get_origin(tp) is list or list in map(typing.get_origin, typing.get_args(tp)):
                    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
                        value = [item for part in value for item in part]  # --key a b, --key a,b
                values[name] = value
            return TrainConfig(**values)

        @staticmethod
        def _argument_error(err: argparse.ArgumentError) -> Exception:
            option = (err.argument_name or "").split("/")[0].lstrip("-").replace("-", "_")
            key = ALIASES.get(option, option)
            tp = _field_types().get(key)
            if tp is not None and err.message.startswith("expected") and "argument" in err.message:
                return TypeError(f"{key}: expected {_type_name(tp)} after --{option}, got nothing")
            return ValueError(f"{key or 'command line'}: {err.message}")

    return TrainConfigParser


def config_parser():
    """A fresh :class:`TrainConfigParser` (transformers' ``HfArgumentParser`` with ncakit's layer)."""
    return _parser_class()()


def config_help() -> str:
    """The ``--help`` text: every key (TRL's names beside it), its value type, default and meaning."""
    return config_parser().format_help()


def debug_requested(argv: list[str] | None = None) -> bool:
    """True when ``--debug`` (bare, ``true``, ``--debug=1``...) is on the command line or the
    environment variable ``NCAKIT_DEBUG`` is set to a true value: the entry points then re-raise
    errors with their traceback instead of printing one line."""
    if os.environ.get("NCAKIT_DEBUG", "").strip().lower() in _TRUE:
        return True
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key.replace("-", "_") != "__debug":
            continue
        if eq:
            return value.strip().lower() in _TRUE
        nxt = argv[i + 1].strip().lower() if i + 1 < len(argv) else ""
        return nxt not in _FALSE
    return False


def parse_config(argv: list[str] | None = None, *, validate: bool = True) -> TrainConfig:
    """``[--config recipe.yaml] [--key value ...]`` -> a checked :class:`TrainConfig`.

    ``--help`` prints :func:`config_help` and exits. Unknown keys -> ValueError; bad values ->
    TypeError; cross-field problems (:meth:`TrainConfig.validate`) -> ValueError.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = config_parser()
    if "-h" in argv or "--help" in argv:
        print(parser.format_help())
        raise SystemExit(0)
    config_path = _config_path(argv)
    _check_one_name_per_key(argv)
    if config_path:
        parser.set_defaults(**load_yaml_config(config_path))
    cfg = parser.parse_config_args(argv)
    return cfg.validate() if validate else cfg
