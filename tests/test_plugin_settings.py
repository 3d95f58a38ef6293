"""Settings of a plugin's own (czo_register_settings): read from their prefix at startup,
validated like the kit's, read with kit.settings_for, listed by `czo-kit settings`."""

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


class ReviewSettings(msgspec.Struct, frozen=True):
    page_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    moderation: Literal["none", "before", "after"] = "after"
    notify: bool = True
    banned_words: tuple[str, ...] = ()
    spam_api_token: str | None = None
    webhook_password: str = ""

    SECRET_FIELDS: ClassVar[frozenset[str]] = frozenset({"webhook_password"})


class Reviews:
    __name__ = "czo_test_review_settings"

    def __init__(self, kind: Any = ReviewSettings, prefix: Any = "CZO_REVIEW_") -> None:
        self.kind = kind
        self.prefix = prefix
        self.seen_at_startup: ReviewSettings | None = None

    @hookimpl
    def czo_register_settings(self, register: Any) -> None:
        register(self.kind, prefix=self.prefix)

    @hookimpl
    def czo_startup(self, kit: Kit) -> None:
        self.seen_at_startup = kit.settings_for(ReviewSettings)


def test_hook_czo_register_settings(
    sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CZO_REVIEW_PAGE_SIZE", "50")
    monkeypatch.setenv("CZO_REVIEW_MODERATION", "before")
    monkeypatch.setenv("CZO_REVIEW_NOTIFY", "off")
    monkeypatch.setenv("CZO_REVIEW_BANNED_WORDS", "spam, scam")
    plugin = Reviews()
    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[plugin]) as kit:
        values = kit.settings_for(ReviewSettings)
        assert values == ReviewSettings(page_size=50, moderation="before", notify=False, banned_words=("spam", "scam"))
        assert plugin.seen_at_startup == values  # ready before the plugins start
        assert [(p, prefix) for p, prefix, _ in kit.plugin_settings()] == [("czo_test_review_settings", "CZO_REVIEW_")]


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("CZO_REVIEW_PAGE_SIZE", "0", "invalid setting CZO_REVIEW_PAGE_SIZE='0': expected an integer >= 1 and <= 100"),
        ("CZO_REVIEW_PAGE_SIZE", "lots", "invalid setting CZO_REVIEW_PAGE_SIZE='lots': expected an integer >= 1 and <= 100"),
        ("CZO_REVIEW_MODERATION", "never", "allowed: after, before, none"),
        ("CZO_REVIEW_NOTIFY", "maybe", "expected true or false"),
    ],
)
def test_a_bad_plugin_setting_stops_the_kit_naming_the_variable(
    variable: str, raw: str, message: str, sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Reviews()])
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
    variable = "CZO_REVIEW_" + field.upper()
    monkeypatch.setenv(variable, "hunter2" * 100)
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Reviews(Strict)])
    assert caught.value.variable == variable
    assert f"invalid setting {variable}='***'" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_misspelt_plugin_variable_is_named_with_a_suggestion(
    sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CZO_REVIEW_PAGESIZE", "50")
    with caplog.at_level(logging.WARNING, logger="czo_kit.kit"):
        with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Reviews()]) as kit:
            assert kit.settings_for(ReviewSettings).page_size == 20
    assert "unknown setting CZO_REVIEW_PAGESIZE (did you mean CZO_REVIEW_PAGE_SIZE?) of plugin czo_test_review_settings" in caplog.text


@pytest.mark.parametrize(
    ("kind", "prefix", "message"),
    [
        (dict, "CZO_REVIEW_", "is not a msgspec.Struct"),
        (ReviewSettings, "czo_review_", "must be upper case, end with '_'"),
        (ReviewSettings, "CZO_REVIEW", "must be upper case, end with '_'"),
        (ReviewSettings, "CZO_", "be the plugin's own (not 'CZO_')"),
        (ReviewSettings, 7, "must be upper case"),
    ],
)
def test_a_bad_registration_is_a_plugin_error(
    kind: Any, prefix: Any, message: str, sqlite_url: str, settings_for: SettingsFor
) -> None:
    with pytest.raises(PluginError, match="czo_test_review_settings") as caught:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Reviews(kind, prefix)])
    assert message in str(caught.value)


def test_two_plugins_cannot_share_a_prefix(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Other(msgspec.Struct):
        x: int = 1

    class Rival:
        __name__ = "czo_test_rival"

        @hookimpl
        def czo_register_settings(self, register: Any) -> None:
            register(Other, prefix="CZO_REVIEW_")

    # Whichever registers second (pluggy's call order) is refused, naming the first.
    with pytest.raises(PluginError, match="already registered (ReviewSettings|Other) with 'CZO_REVIEW_'"):
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Reviews(), Rival()])


def test_settings_for_an_unregistered_struct_lists_the_registered(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Unknown(msgspec.Struct):
        x: int = 1

    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Reviews()]) as kit:
        with pytest.raises(ConfigurationError, match="no plugin registered settings 'Unknown'.*registered: ReviewSettings"):
            kit.settings_for(Unknown)


def test_the_cli_lists_every_plugins_settings_with_secrets_masked(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from czo_kit.cli import cli

    monkeypatch.setenv("CZO_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CZO_QUEUE_URL", "")
    monkeypatch.setenv("CZO_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("CZO_REVIEW_SPAM_API_TOKEN", "tok-123456")
    monkeypatch.setenv("CZO_REVIEW_WEBHOOK_PASSWORD", "hunter2")
    real = Kit.from_env
    monkeypatch.setattr(Kit, "from_env", classmethod(lambda cls, **o: Kit(Settings.from_env(**o), plugins=[Reviews()])))
    try:
        text = CliRunner().invoke(cli, ["settings"])
        as_json = CliRunner().invoke(cli, ["settings", "--json"])
    finally:
        monkeypatch.setattr(Kit, "from_env", real)
    assert text.exit_code == 0, text.output
    assert "czo_test_review_settings\n  CZO_REVIEW_PAGE_SIZE=20\n" in text.output
    assert "CZO_REVIEW_SPAM_API_TOKEN=***" in text.output and "CZO_REVIEW_WEBHOOK_PASSWORD=***" in text.output
    assert "CZO_SECRET_KEY=***" in text.output
    for secret in ("tok-123456", "hunter2", "s" * 40):
        assert secret not in text.output and secret not in as_json.output
    sections = {section["plugin"]: section for section in json.loads(as_json.output)}
    assert sections["czo_test_review_settings"]["prefix"] == "CZO_REVIEW_"
    assert sections["czo_test_review_settings"]["settings"]["moderation"] == "after"
    assert sections["czo-kit"]["settings"]["secret_key"] == "***"
