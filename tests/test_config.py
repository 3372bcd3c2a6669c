"""LogConfig: sources, precedence, parsing and error messages (unit, in-process)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import pytest
from celery import Celery

import logkit
from logkit.config import CONTEXT_FIELDS, DEFAULT_REDACT_KEYS, ConfigError, LogConfig


def _app(**conf: Any) -> Celery:
    app = Celery("cfg", set_as_current=False)
    app.conf.update(conf)
    return app


def test_defaults() -> None:
    config = LogConfig.resolve(None, {}, env={})
    assert config == LogConfig()
    assert config.format == "auto"
    assert dict(config.fields) == {}
    assert config.context_fields == CONTEXT_FIELDS
    assert config.log_args is False  # args/kwargs are opt-in
    assert config.redact_keys == DEFAULT_REDACT_KEYS
    assert {"password", "token", "secret", "authorization", "api_key"} <= config.redact_keys
    assert config.propagate == ("*",)


def test_frozen_and_hashable_values() -> None:
    config = LogConfig(fields={"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.format = "json"  # type: ignore[misc]
    assert isinstance(config.fields, MappingProxyType)
    with pytest.raises(TypeError):
        config.fields["b"] = 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("app_conf", "kwargs", "env", "cli", "expected"),
    [
        ({}, {}, {}, {}, "auto"),
        ({"logkit_format": "plain"}, {}, {}, {}, "plain"),
        ({"LOGKIT_FORMAT": "plain"}, {}, {}, {}, "plain"),  # upper-case Celery setting style
        ({"logkit_format": "plain"}, {"format": "console"}, {}, {}, "console"),
        ({"logkit_format": "plain"}, {"format": "console"}, {"LOGKIT_FORMAT": "json"}, {}, "json"),
        ({}, {"format": "console"}, {"LOGKIT_FORMAT": "json"}, {"format": "plain"}, "plain"),
    ],
    ids=["default", "app.conf", "app.conf-upper", "kwargs>app.conf", "env>kwargs", "cli>env"],
)
def test_precedence(
    app_conf: dict[str, Any], kwargs: dict[str, Any], env: dict[str, str], cli: dict[str, Any],
    expected: str,
) -> None:  # fmt: skip
    config = LogConfig.resolve(_app(**app_conf), kwargs, env=env, cli=cli)
    assert config.format == expected


def test_each_option_is_resolved_per_option() -> None:
    config = LogConfig.resolve(
        _app(logkit_fields={"service": "a"}, logkit_log_args=True),
        {"format": "json", "fields": {"service": "kw"}},
        env={"LOGKIT_MAX_FIELD_LENGTH": "100", "LOGKIT_FIELDS": "service=env,env=prod"},
    )
    assert config.format == "json"  # kwargs
    assert dict(config.fields) == {"service": "env", "env": "prod"}  # env replaces, not merges
    assert config.log_args is True  # app.conf, nothing overrides it
    assert config.max_field_length == 100  # env string parsed to int


def test_env_is_read_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGKIT_FORMAT", " JSON ")
    monkeypatch.setenv("LOGKIT_QUEUE", "yes")
    config = LogConfig.resolve(None, {})
    assert config.format == "json" and config.queue is True


@pytest.mark.parametrize(
    ("option", "raw", "parsed"),
    [
        ("watch_file", "off", False),
        ("watch_file", "1", True),
        ("watch_file", 0, False),
        ("fields", "a=1, b = two", {"a": "1", "b": "two"}),
        ("fields", ["a=1"], {"a": "1"}),
        ("context_fields", "task_id, task_name", ("task_id", "task_name")),
        ("field_names", {"task_id": "celery_task_id"}, {"task_id": "celery_task_id"}),
        ("redact_keys", "Password,SSN", frozenset({"password", "ssn"})),
        ("propagate", "request_id,tenant", ("request_id", "tenant")),
        ("args_max_length", "50", 50),
        ("event_levels", "task_succeeded=debug", {"task_succeeded": "DEBUG"}),
        ("disabled_events", ["task_received"], ("task_received",)),
    ],
)
def test_parsing_from_strings_and_python_values(option: str, raw: Any, parsed: Any) -> None:
    value = getattr(LogConfig.resolve(None, {option: raw}, env={}), option)
    assert (dict(value) if isinstance(value, MappingProxyType) else value) == parsed


def test_bad_env_value_names_option_source_value_and_choices() -> None:
    with pytest.raises(ConfigError) as excinfo:
        LogConfig.resolve(None, {}, env={"LOGKIT_FORMAT": "jsn"})
    message = str(excinfo.value)
    assert "'format'" in message
    assert "environment variable LOGKIT_FORMAT" in message
    assert "'jsn'" in message
    assert "'auto', 'json', 'console', 'plain'" in message


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"format": "xml"}, ["'format'", "keyword argument", "'xml'", "'json'"]),
        ({"max_field_length": 0}, ["'max_field_length'", "positive integer", "0"]),
        ({"max_field_length": True}, ["'max_field_length'", "True"]),
        ({"watch_file": "maybe"}, ["'watch_file'", "boolean", "'maybe'"]),
        ({"context_fields": ["task_id", "tsk_name"]}, ["'tsk_name'", "'task_name'"]),
        ({"fields": "novalue"}, ["'fields'", "key=value"]),
        ({"field_names": {"task_id": ""}}, ["'field_names'", "'task_id'"]),
        ({"field_names": {"timestmp": "ts"}}, ["'field_names'", "'timestmp'", "'timestamp'"]),
        ({"event_levels": {"task_succeeded": "LOUD"}}, ["'task_succeeded'", "'LOUD'", "'DEBUG'"]),
        ({"disabled_events": ["nope"]}, ["'nope'", "'task_received'"]),
    ],
)
def test_bad_values_fail_with_clear_messages(options: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        LogConfig.resolve(None, options, env={})
    for fragment in fragments:
        assert fragment in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_bad_app_conf_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"'format' \(app.conf logkit_format\).*'yaml'"):
        LogConfig.resolve(_app(logkit_format="yaml"), {}, env={})


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as excinfo:
        LogConfig.resolve(None, {"formatt": "json"}, env={})
    message = str(excinfo.value)
    assert "'formatt'" in message and "format" in message and "redact_keys" in message


def test_install_validates_now() -> None:
    app = _app()
    with pytest.raises(ConfigError, match="'format'"):
        logkit.install(app, format="jsn")
    with pytest.raises(ConfigError, match="unknown option"):
        logkit.install(app, colour=True)


def test_replace_validates() -> None:
    config = LogConfig()
    assert config.replace(format="plain").format == "plain"
    with pytest.raises(ConfigError):
        config.replace(format="html")
    with pytest.raises(ConfigError):
        config.replace(nonsense=1)


def test_broken_app_conf_does_not_break_resolution() -> None:
    class BadConf:
        def get(self, key: str) -> Any:
            raise RuntimeError("settings backend down")

    class BadApp:
        conf = BadConf()

    assert LogConfig.resolve(BadApp(), {"format": "json"}, env={}).format == "json"


def test_installation_resolves_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGKIT_FORMAT", raising=False)
    monkeypatch.delenv("LOGKIT_FIELDS", raising=False)
    app = _app(logkit_format="plain")
    inst = logkit.install(app, fields={"a": "b"})
    config = inst.config
    assert config.format == "plain" and dict(config.fields) == {"a": "b"}
    assert inst.config is config  # resolved once, not on every access
