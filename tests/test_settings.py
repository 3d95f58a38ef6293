"""Settings: environment parsing, validation of every field, and secrets kept out of sight."""

from __future__ import annotations

import logging

import msgspec
import pytest

from czo_kit.errors import ConfigurationError
from czo_kit.settings import Settings, redact_url

SECRET = "super-secret-signing-key-" + "z" * 24  # 49 characters
PASSWORD = "hunter2-db-password"


def error_for(env: dict[str, str], **overrides: object) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env, **overrides)
    return caught.value


# -- good values ----------------------------------------------------------------------


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url == "sqlite:///czo.sqlite3"
    assert settings.db_pool_size == 10
    assert settings.secret_key is None
    assert settings.plugins is None
    assert settings.disable_plugins == ()
    assert settings.log_level == "WARNING"


def test_fields_from_env() -> None:
    env = {
        "CZO_DATABASE_URL": "postgresql://app@db.internal:5432/shop",
        "CZO_DB_POOL_SIZE": "25",
        "CZO_DB_POOL_TIMEOUT": "2.5",
        "CZO_DB_STALE_TIMEOUT": "60",
        "CZO_SECRET_KEY": SECRET,
        "CZO_PLUGINS": "czo_product,czo_order",
        "CZO_DISABLE_PLUGINS": "postgres",
        "CZO_LOG_LEVEL": "DEBUG",
    }
    settings = Settings.from_env(env)
    assert settings.database_url == "postgresql://app@db.internal:5432/shop"
    assert settings.db_pool_size == 25
    assert settings.db_pool_timeout == 2.5
    assert settings.db_stale_timeout == 60.0
    assert settings.secret_key == SECRET
    assert settings.plugins == ("czo_product", "czo_order")
    assert settings.disable_plugins == ("postgres",)
    assert settings.log_level == "DEBUG"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_DB_POOL_SIZE", "17")
    assert Settings.from_env().db_pool_size == 17


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(" 5 ", 5), ("\t7\n", 7), ("1", 1), ("1000", 1000), ("5.0", 5)],
)
def test_integer_parsing_tolerates_whitespace(raw: str, expected: int) -> None:
    assert Settings.from_env({"CZO_DB_POOL_SIZE": raw}).db_pool_size == expected


def test_boundaries_are_inclusive_where_documented() -> None:
    assert Settings.from_env({"CZO_DB_POOL_TIMEOUT": "86400"}).db_pool_timeout == 86400.0
    assert Settings.from_env({"CZO_DB_POOL_TIMEOUT": "0.001"}).db_pool_timeout == 0.001


def test_literal_with_surrounding_whitespace() -> None:
    assert Settings.from_env({"CZO_LOG_LEVEL": "  WARNING\n"}).log_level == "WARNING"


def test_unicode_values_that_are_valid() -> None:
    settings = Settings.from_env(
        {"CZO_DATABASE_URL": "sqlite:///données/café.sqlite3", "CZO_SECRET_KEY": "é" * 32}
    )
    assert settings.database_url == "sqlite:///données/café.sqlite3"
    assert settings.secret_key == "é" * 32  # length counts characters, not bytes


# -- lists and booleans -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a", ("a",)),
        ("a,b", ("a", "b")),
        (" a , b ,, ", ("a", "b")),
        (",", ()),
        ("", ()),
    ],
)
def test_list_parsing(raw: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"CZO_DISABLE_PLUGINS": raw}).disable_plugins == expected


def test_plugins_unset_empty_and_set_differ() -> None:
    assert Settings.from_env({}).plugins is None  # every installed plugin
    assert Settings.from_env({"CZO_PLUGINS": ""}).plugins == ()  # none
    assert Settings.from_env({"CZO_PLUGINS": "czo_product"}).plugins == ("czo_product",)


class FlagSettings(Settings, kw_only=True, frozen=True):
    """A subclass with a boolean, as a module extending the settings would write it."""

    debug: bool = False


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "Yes", " on "])
def test_bool_parsing_true(raw: str) -> None:
    assert FlagSettings.from_env({"CZO_DEBUG": raw}).debug is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "OFF", ""])
def test_bool_parsing_false(raw: str) -> None:
    assert FlagSettings.from_env({"CZO_DEBUG": raw}).debug is False


@pytest.mark.parametrize("raw", ["maybe", "2", "tru", "y"])
def test_bool_parsing_rejects_other_words(raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        FlagSettings.from_env({"CZO_DEBUG": raw})
    assert caught.value.variable == "CZO_DEBUG"
    assert "CZO_DEBUG" in str(caught.value)
    # What is allowed, in the words the environment uses, not msgspec's "Expected `bool`".
    assert str(caught.value).endswith("expected true or false (also yes/no, on/off, 1/0; empty is false)")


@pytest.mark.parametrize("raw", ["10,,x", "10,0", "10,86401", ",".join(["1"] * 51)])
def test_a_bad_number_list_says_what_each_item_may_be(raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"CZO_WEBHOOKS_RETRY_SCHEDULE": raw})
    assert caught.value.variable == "CZO_WEBHOOKS_RETRY_SCHEDULE"
    assert str(caught.value).endswith(
        "expected a comma-separated list, each item a number > 0 and <= 86400, 1 to 50 of them"
    )
    assert "Expected" not in str(caught.value)


# -- overrides ----------------------------------------------------------------------------


def test_overrides_win_over_env() -> None:
    env = {"CZO_DB_POOL_SIZE": "5", "CZO_LOG_LEVEL": "ERROR"}
    settings = Settings.from_env(env, db_pool_size=7)
    assert settings.db_pool_size == 7
    assert settings.log_level == "ERROR"  # not overridden: from the environment


def test_overrides_are_validated_and_reported_as_given() -> None:
    error = error_for({"CZO_DB_POOL_SIZE": "5"}, db_pool_size=0)
    assert error.variable == "CZO_DB_POOL_SIZE"
    # The message shows the bad override, not the good environment value it replaced.
    assert "CZO_DB_POOL_SIZE=0" in str(error)
    assert "'5'" not in str(error)


def test_unknown_override_is_refused_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match="'db_pool_sise'.*did you mean 'db_pool_size'"):
        Settings.from_env({}, db_pool_sise=5)


# -- malformed and hostile input ------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "allowed"),
    [
        ("CZO_DB_POOL_SIZE", "x", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "   ", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "5.5", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "0x10", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "0", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "-3", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "1001", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "5" * 400, "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_SIZE", "\uff15", "an integer >= 1 and <= 1000"),  # fullwidth digit five
        ("CZO_DB_POOL_SIZE", "1\x00", "an integer >= 1 and <= 1000"),
        ("CZO_DB_POOL_TIMEOUT", "soon", "a number > 0 and <= 86400"),
        ("CZO_DB_POOL_TIMEOUT", "0", "a number > 0 and <= 86400"),
        ("CZO_DB_POOL_TIMEOUT", "-1", "a number > 0 and <= 86400"),
        ("CZO_DB_POOL_TIMEOUT", "nan", "a number > 0 and <= 86400"),
        ("CZO_DB_POOL_TIMEOUT", "inf", "a number > 0 and <= 86400"),
        ("CZO_DB_STALE_TIMEOUT", "86401", "a number > 0 and <= 86400"),
        ("CZO_LOG_LEVEL", "verbose", "allowed: CRITICAL, DEBUG, ERROR, INFO, WARNING"),
        ("CZO_LOG_LEVEL", "debug", "allowed: CRITICAL, DEBUG, ERROR, INFO, WARNING"),
        ("CZO_LOG_LEVEL", "", "allowed: CRITICAL, DEBUG, ERROR, INFO, WARNING"),
        ("CZO_LOG_LEVEL", "\u0130NFO", "allowed: CRITICAL, DEBUG, ERROR, INFO, WARNING"),
        ("CZO_DATABASE_URL", "czo.sqlite3", "expected a URL such as 'sqlite:///czo.sqlite3'"),
        ("CZO_DATABASE_URL", "", "expected a URL such as 'sqlite:///czo.sqlite3'"),
        ("CZO_DATABASE_URL", "  \t ", "expected a URL such as 'sqlite:///czo.sqlite3'"),
        ("CZO_DATABASE_URL", "://nohost", "expected a URL such as 'sqlite:///czo.sqlite3'"),
        ("CZO_DATABASE_URL", "sqlite:/one-slash.db", "expected a URL such as 'sqlite:///czo.sqlite3'"),
        ("CZO_DATABASE_URL", "postgresql://[::1/db", "expected a URL such as 'sqlite:///czo.sqlite3'"),
        ("CZO_SECRET_KEY", "short", "at least 32 characters"),
        ("CZO_SECRET_KEY", "", "at least 32 characters"),
        ("CZO_SECRET_KEY", "  " + "a" * 20 + "  ", "at least 32 characters"),
    ],
)
def test_malformed_value_names_variable_and_what_is_allowed(
    variable: str, raw: str, allowed: str
) -> None:
    error = error_for({variable: raw})
    assert error.variable == variable
    assert variable in str(error)
    assert allowed in str(error)
    assert "Traceback" not in str(error)


def test_very_long_values_are_cut_in_the_message() -> None:
    huge = "x" * 1_000_000
    error = error_for({"CZO_DATABASE_URL": huge})
    assert error.variable == "CZO_DATABASE_URL"
    assert len(str(error)) < 400
    assert "(1000002 characters)" in str(error)  # the length of the repr, quotes included


def test_error_is_not_chained_to_msgspec_internals() -> None:
    error = error_for({"CZO_DB_POOL_SIZE": "x"})
    assert error.__cause__ is None
    assert error.__suppress_context__ is True
    assert isinstance(error, ValueError)  # ConfigurationError is also a ValueError


# -- direct construction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"db_pool_size": "x"}, "db_pool_size", "an integer >= 1 and <= 1000"),
        ({"db_pool_size": True}, "db_pool_size", "an integer >= 1 and <= 1000"),
        ({"db_pool_size": 5.0}, "db_pool_size", "an integer >= 1 and <= 1000"),
        ({"db_pool_size": 0}, "db_pool_size", "an integer >= 1 and <= 1000"),
        ({"db_pool_timeout": -1.0}, "db_pool_timeout", "a number > 0 and <= 86400"),
        ({"log_level": "TRACE"}, "log_level", "allowed: CRITICAL, DEBUG, ERROR, INFO, WARNING"),
        ({"database_url": "nope"}, "database_url", "expected a URL"),
        ({"database_url": 42}, "database_url", "Expected `str`"),
        ({"secret_key": "short"}, "secret_key", "at least 32 characters"),
        ({"disable_plugins": "sqlite"}, "disable_plugins", "Expected `array`"),
    ],
)
def test_direct_construction_validates(changes: dict[str, object], field: str, allowed: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**changes)  # type: ignore[arg-type]
    assert caught.value.variable == "CZO_" + field.upper()
    assert field in str(caught.value)
    assert allowed in str(caught.value)


def test_replace_validates_too() -> None:
    settings = Settings(db_pool_size=3)
    assert settings.replace(db_pool_size=4).db_pool_size == 4
    assert settings.db_pool_size == 3  # frozen: replace made a copy
    with pytest.raises(ConfigurationError, match="db_pool_size"):
        settings.replace(db_pool_size="x")


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nope"):
        Settings(nope=1)  # type: ignore[call-arg]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.db_pool_size = 3  # type: ignore[misc]


# -- secrets --------------------------------------------------------------------------------------


def test_secret_key_never_shown() -> None:
    settings = Settings(secret_key=SECRET)
    for text in (repr(settings), str(settings), repr(settings.public_dict())):
        assert SECRET not in text
        assert "***" in text
    assert settings.public_dict()["secret_key"] == "***"
    assert settings.secret_key == SECRET  # still usable by the code that needs it


def test_unset_secret_shows_as_none_not_mask() -> None:
    assert Settings().public_dict()["secret_key"] is None
    assert "secret_key=None" in repr(Settings())


def test_secret_not_in_error_about_its_length() -> None:
    short = "my-short-but-real-secret"
    error = error_for({"CZO_SECRET_KEY": short})
    assert short not in str(error)
    assert f"got {len(short)}" in str(error)
    with pytest.raises(ConfigurationError) as caught:
        Settings(secret_key=short)
    assert short not in str(caught.value)


def test_secret_not_in_error_about_its_type() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(secret_key=12345678901234567890123456789012345)  # type: ignore[arg-type]
    assert "12345678901234567890123456789012345" not in str(caught.value)
    assert "secret_key='***'" in str(caught.value)


def test_secret_not_in_error_about_another_variable() -> None:
    error = error_for({"CZO_SECRET_KEY": SECRET, "CZO_DB_POOL_SIZE": "x"})
    assert error.variable == "CZO_DB_POOL_SIZE"
    assert SECRET not in str(error)


def test_database_password_never_shown() -> None:
    url = f"postgresql://shop:{PASSWORD}@db.internal:5432/shop"
    settings = Settings(database_url=url)
    assert settings.database_url == url
    for text in (repr(settings), str(settings), repr(settings.public_dict())):
        assert PASSWORD not in text
        assert "postgresql://shop:***@db.internal:5432/shop" in text


def test_database_password_not_in_error_messages() -> None:
    # Missing "://": not parseable, yet the user:password@ part is still masked.
    error = error_for({"CZO_DATABASE_URL": f"postgresql//shop:{PASSWORD}@db/shop"})
    assert PASSWORD not in str(error)
    assert "shop:***@db" in str(error)
    with pytest.raises(ConfigurationError) as caught:
        Settings(database_url=f"postgresql:shop:{PASSWORD}@db/shop")
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # '@' inside the password
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("sqlite:///czo.sqlite3", "sqlite:///czo.sqlite3"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- unknown variables ------------------------------------------------------------------------------


def test_close_misspelling_logs_did_you_mean(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="czo_kit.settings"):
        settings = Settings.from_env({"CZO_DB_POOL_SIZ": "3"})
    assert settings.db_pool_size == 10  # ignored, not guessed
    messages = [r.getMessage() for r in caplog.records if r.name == "czo_kit.settings"]
    assert messages == [
        "unknown setting CZO_DB_POOL_SIZ is ignored; did you mean CZO_DB_POOL_SIZE?"
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_unrelated_and_foreign_variables_are_quiet(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "CZO_SOMETHING_ELSE": "1",
        "CZO_TEST_DATABASE_URL": "postgresql://x@y/z",
        "PATH": "/usr/bin",
        "DB_POOL_SIZE": "3",
    }
    with caplog.at_level(logging.WARNING, logger="czo_kit.settings"):
        Settings.from_env(env)
    assert [r for r in caplog.records if r.name == "czo_kit.settings"] == []


def test_did_you_mean_never_echoes_the_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="czo_kit.settings"):
        Settings.from_env({"CZO_SECRET_KY": SECRET})
    assert "CZO_SECRET_KEY" in caplog.text
    assert SECRET not in caplog.text


def test_settings_round_trip_through_msgspec() -> None:
    settings = Settings(db_pool_size=4, plugins=("a",))
    data = msgspec.to_builtins(settings)
    assert msgspec.convert(data, Settings) == settings


def test_lists_given_for_plugin_settings_become_tuples() -> None:
    settings = Settings(plugins=["a", "b"], disable_plugins=["c"])  # type: ignore[arg-type]
    assert settings.plugins == ("a", "b") and settings.disable_plugins == ("c",)
    assert hash(settings) == hash(Settings(plugins=("a", "b"), disable_plugins=("c",)))
