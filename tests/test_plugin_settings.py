"""Settings of a plugin's own (czo_register_settings): read from their prefix at startup,
validated like the kit's, read with kit.settings_for, listed by `czo-kit settings`.

A hand-made plugin with the prefix ``CZO_FEEDBACK_`` (the outside reviews module, installed in
the test environment, owns ``CZO_REVIEW_``: tests/test_reviews_module.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import pytest
from click.testing import CliRunner

from czo_kit import Kit, hookimpl
from czo_kit.errors import ConfigurationError, PluginError
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]


class FeedbackSettings(msgspec.Struct, frozen=True):
    page_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    moderation: Literal["none", "before", "after"] = "after"
    notify: bool = True
    banned_words: tuple[str, ...] = ()
    spam_api_token: str | None = None
    webhook_password: str = ""

    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset({"webhook_password"})


class Feedback:
    __name__ = "czo_test_feedback_settings"

    def __init__(self, kind: Any = FeedbackSettings, prefix: Any = "CZO_FEEDBACK_") -> None:
        self.kind = kind
        self.prefix = prefix
        self.seen_at_startup: FeedbackSettings | None = None

    @hookimpl
    def czo_register_settings(self, register: Any) -> None:
        register(self.kind, prefix=self.prefix)

    @hookimpl
    def czo_startup(self, kit: Kit) -> None:
        self.seen_at_startup = kit.settings_for(FeedbackSettings)


def test_hook_czo_register_settings(
    sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CZO_FEEDBACK_PAGE_SIZE", "50")
    monkeypatch.setenv("CZO_FEEDBACK_MODERATION", "before")
    monkeypatch.setenv("CZO_FEEDBACK_NOTIFY", "off")
    monkeypatch.setenv("CZO_FEEDBACK_BANNED_WORDS", "spam, scam")
    plugin = Feedback()
    # No installed plugin (plugins=()): the hand-made one's settings are the only ones.
    with Kit(settings_for(sqlite_url, queue_url="", plugins=()), plugins=[plugin]) as kit:
        values = kit.settings_for(FeedbackSettings)
        assert values == FeedbackSettings(page_size=50, moderation="before", notify=False, banned_words=("spam", "scam"))
        assert plugin.seen_at_startup == values  # ready before the plugins start
        assert [(p, prefix) for p, prefix, _ in kit.plugin_settings()] == [("czo_test_feedback_settings", "CZO_FEEDBACK_")]


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("CZO_FEEDBACK_PAGE_SIZE", "0", "invalid setting CZO_FEEDBACK_PAGE_SIZE='0': expected an integer >= 1 and <= 100"),
        ("CZO_FEEDBACK_PAGE_SIZE", "lots", "invalid setting CZO_FEEDBACK_PAGE_SIZE='lots': expected an integer >= 1 and <= 100"),
        ("CZO_FEEDBACK_MODERATION", "never", "allowed: after, before, none"),
        ("CZO_FEEDBACK_NOTIFY", "maybe", "expected true or false"),
    ],
)
def test_a_bad_plugin_setting_stops_the_kit_naming_the_variable(
    variable: str, raw: str, message: str, sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Feedback()])
    assert caught.value.variable == variable
    assert message in str(caught.value)


@pytest.mark.parametrize("field", ["webhook_password", "signing_secret"])  # declared, or by its name
def test_a_bad_secret_setting_is_named_without_its_value(
    field: str, sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    Strict = msgspec.defstruct(
        "Strict", [(field, Annotated[str, msgspec.Meta(max_length=64)], "")],
        namespace={"SECRET_FIELDS": frozenset({"webhook_password"})},
    )
    variable = "CZO_FEEDBACK_" + field.upper()
    monkeypatch.setenv(variable, "hunter2" * 100)
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Feedback(Strict)])
    assert caught.value.variable == variable
    assert f"invalid setting {variable}='***'" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_misspelt_plugin_variable_is_named_with_a_suggestion(
    sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CZO_FEEDBACK_PAGESIZE", "50")
    with caplog.at_level(logging.WARNING, logger="czo_kit.kit"):
        with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Feedback()]) as kit:
            assert kit.settings_for(FeedbackSettings).page_size == 20
    assert "unknown setting CZO_FEEDBACK_PAGESIZE (did you mean CZO_FEEDBACK_PAGE_SIZE?) of plugin czo_test_feedback_settings" in caplog.text


@pytest.mark.parametrize(
    ("kind", "prefix", "message"),
    [
        (dict, "CZO_FEEDBACK_", "is not a msgspec.Struct"),
        (FeedbackSettings, "czo_feedback_", "must be upper case, end with '_'"),
        (FeedbackSettings, "CZO_FEEDBACK", "must be upper case, end with '_'"),
        (FeedbackSettings, "CZO_", "be the plugin's own (not 'CZO_')"),
        (FeedbackSettings, 7, "must be upper case"),
    ],
)
def test_a_bad_registration_is_a_plugin_error(
    kind: Any, prefix: Any, message: str, sqlite_url: str, settings_for: SettingsFor
) -> None:
    with pytest.raises(PluginError, match="czo_test_feedback_settings") as caught:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Feedback(kind, prefix)])
    assert message in str(caught.value)


def test_two_plugins_cannot_share_a_prefix(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Other(msgspec.Struct):
        x: int = 1

    class Rival:
        __name__ = "czo_test_rival"

        @hookimpl
        def czo_register_settings(self, register: Any) -> None:
            register(Other, prefix="CZO_FEEDBACK_")

    # Whichever registers second (pluggy's call order) is refused, naming the first.
    with pytest.raises(PluginError, match="already registered (FeedbackSettings|Other) with 'CZO_FEEDBACK_'"):
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Feedback(), Rival()])


def test_settings_for_an_unregistered_struct_lists_the_registered(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Unknown(msgspec.Struct):
        x: int = 1

    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Feedback()]) as kit:
        with pytest.raises(ConfigurationError, match="no plugin registered settings 'Unknown'.*registered: FeedbackSettings"):
            kit.settings_for(Unknown)


def test_the_cli_lists_every_plugins_settings_with_secrets_masked(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from czo_kit.cli import cli

    monkeypatch.setenv("CZO_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CZO_QUEUE_URL", "")
    monkeypatch.setenv("CZO_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("CZO_FEEDBACK_SPAM_API_TOKEN", "tok-123456")
    monkeypatch.setenv("CZO_FEEDBACK_WEBHOOK_PASSWORD", "hunter2")
    real = Kit.from_env
    monkeypatch.setattr(Kit, "from_env", classmethod(lambda cls, **o: Kit(Settings.from_env(**o), plugins=[Feedback()])))
    try:
        text = CliRunner().invoke(cli, ["settings"])
        as_json = CliRunner().invoke(cli, ["settings", "--json"])
    finally:
        monkeypatch.setattr(Kit, "from_env", real)
    assert text.exit_code == 0, text.output
    assert "czo_test_feedback_settings\n  CZO_FEEDBACK_PAGE_SIZE=20\n" in text.output
    assert "CZO_FEEDBACK_SPAM_API_TOKEN=***" in text.output and "CZO_FEEDBACK_WEBHOOK_PASSWORD=***" in text.output
    assert "CZO_SECRET_KEY=***" in text.output
    for secret in ("tok-123456", "hunter2", "s" * 40):
        assert secret not in text.output and secret not in as_json.output
    sections = {section["plugin"]: section for section in json.loads(as_json.output)}
    assert sections["czo_test_feedback_settings"]["prefix"] == "CZO_FEEDBACK_"
    assert sections["czo_test_feedback_settings"]["settings"]["moderation"] == "after"
    assert sections["czo-kit"]["settings"]["secret_key"] == "***"
