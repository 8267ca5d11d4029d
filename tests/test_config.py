"""Settings: precedence, the environment variable rule, validation and masking."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from poolctl.config import SECTIONS, PoolTypeSettings, env_name, load_settings, mask_url
from poolctl.errors import ConfigError, UnknownPoolType

EXAMPLE = Path(__file__).parent.parent / "poolctl.toml.example"


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./poolctl.toml unless a test writes one
    return tmp_path


def test_defaults_match_design() -> None:
    settings = load_settings()
    assert settings.database.url == "sqlite:///poolctl.db"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert sorted(settings.pools) == ["contents", "titles"]
    titles = settings.pools["titles"]
    assert (titles.size, titles.threshold, titles.batch) == (5000, 1000, 500)
    assert (settings.fill.interval_s, settings.fill.lock_ttl_s) == (5.0, 60.0)


def test_precedence_flag_env_file_default(in_empty_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (in_empty_dir / "poolctl.toml").write_text('[fill]\ninterval_s = 7\nlock_ttl_s = 30\nmin_interval_s = 0.5\n')
    monkeypatch.setenv("POOLCTL_FILL_LOCK_TTL_S", "20")
    monkeypatch.setenv("POOLCTL_FILL_MIN_INTERVAL_S", "0.25")
    settings = load_settings(fill={"min_interval_s": 0.125})
    assert settings.fill.discover_interval_s == 30.0  # default
    assert settings.fill.interval_s == 7.0  # file
    assert settings.fill.lock_ttl_s == 20.0  # env over file
    assert settings.fill.min_interval_s == 0.125  # flag over env


def test_config_file_from_env(in_empty_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = in_empty_dir / "other.toml"
    other.write_text('[redis]\nkey_prefix = "from-env-file:"\n')
    (in_empty_dir / "poolctl.toml").write_text('[redis]\nkey_prefix = "from-default-file:"\n')
    monkeypatch.setenv("POOLCTL_CONFIG", str(other))
    assert load_settings().redis.key_prefix == "from-env-file:"


def test_file_pools_replace_defaults(in_empty_dir: Path) -> None:
    (in_empty_dir / "poolctl.toml").write_text('[pools.articles]\ntable = "articles"\ntext_column = "body"\nsize = 10\nthreshold = 2\nbatch = 5\n')
    settings = load_settings()
    assert list(settings.pools) == ["articles"]
    with pytest.raises(UnknownPoolType):
        settings.pool("titles")


def test_partial_default_pool_keeps_table(in_empty_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (in_empty_dir / "poolctl.toml").write_text('[pools.titles]\nsize = 8000\n\n[pools.articles]\ntable = "a"\ntext_column = "b"\n')
    monkeypatch.setenv("POOLCTL_POOLS_CONTENTS_SIZE", "9000")  # the environment may name a default type too
    settings = load_settings()
    assert sorted(settings.pools) == ["articles", "contents", "titles"]
    titles = settings.pools["titles"]
    assert (titles.table, titles.text_column, titles.text_type, titles.size) == ("titles", "title", "short", 8000)
    contents = settings.pools["contents"]
    assert (contents.table, contents.text_column, contents.size) == ("contents", "content", 9000)


def test_new_pool_type_needs_table(in_empty_dir: Path) -> None:
    (in_empty_dir / "poolctl.toml").write_text("[pools.articles]\nsize = 10\nthreshold = 2\nbatch = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.message.startswith("pool type 'articles' has no table and no text_column")
    assert caught.value.hint == "Fix it in poolctl.toml"  # no guess: articles is not a misspelled titles


@pytest.mark.parametrize("name", ["TITLE", "TITEL", "CONTNETS"])  # a letter missing, two swapped
def test_misspelled_pool_type_in_env_names_the_default(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(f"POOLCTL_POOLS_{name}_SIZE", "5")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    meant = "contents" if name == "CONTNETS" else "titles"
    assert caught.value.message.startswith(f"pool type '{name.lower()}' has no table and no text_column")
    assert f"POOLCTL_POOLS_{name}_SIZE" in caught.value.hint
    assert caught.value.hint.endswith(f"(did you mean pool type {meant}?)")


def test_env_adjusts_default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLCTL_POOLS_TITLES_SIZE", "300")
    monkeypatch.setenv("POOLCTL_POOLS_TITLES_THRESHOLD", "30")
    monkeypatch.setenv("POOLCTL_POOLS_TITLES_BATCH", "30")
    monkeypatch.setenv("POOLCTL_POOLS_TITLES_TEXT_COLUMN", "headline")
    settings = load_settings()
    assert (settings.pools["titles"].size, settings.pools["titles"].text_column) == (300, "headline")
    assert settings.pools["contents"].size == 5000


def test_env_name_rule_covers_every_key() -> None:
    assert env_name("redis", "url") == "POOLCTL_REDIS_URL"
    assert env_name("database", "url") == "POOLCTL_DATABASE_URL"
    assert env_name("pools", "titles", "text_column") == "POOLCTL_POOLS_TITLES_TEXT_COLUMN"


def test_example_documents_every_key() -> None:
    """poolctl.toml.example loads, and lists every setting the code has."""
    data = tomllib.loads(EXAMPLE.read_text())
    for section, model in SECTIONS.items():
        assert set(data[section]) == set(model.model_fields), section
    for pool in data["pools"].values():
        assert set(pool) == set(PoolTypeSettings.model_fields)
    settings = load_settings(EXAMPLE)
    assert settings == load_settings()  # the example states the defaults


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"POOLCTL_POOLS_TITLES_SIZE": "0"}, "pools.titles.size"),
        ({"POOLCTL_POOLS_TITLES_THRESHOLD": "5000"}, "threshold (5000) must be below size (5000)"),
        ({"POOLCTL_POOLS_TITLES_BATCH": "6000"}, "batch (6000) must be at most size (5000)"),
        ({"POOLCTL_STATUS_QUEUED": "1"}, "three different values"),
        ({"POOLCTL_POOLS_TITLES_STATUS_COLUMN": "status`"}, "not a valid SQL identifier"),
        ({"POOLCTL_REDIS_URL": "http://example"}, "redis.url"),
        ({"POOLCTL_REDIS_URL": "redis://127.0.0.1:6379/abc"}, "database number 'abc' is not a number"),
        ({"POOLCTL_NO_SUCH_THING": "1"}, "unknown environment variable POOLCTL_NO_SUCH_THING"),
    ],
)
def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], fragment: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert fragment in str(caught.value)
    assert next(iter(variables)) in str(caught.value) or "POOLCTL" in str(caught.value)


def test_invalid_url_never_echoes_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLCTL_DATABASE_URL", "postgres://user:hunter2@db/x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_settings_repr_hides_urls() -> None:
    settings = load_settings(redis={"url": "redis://:hunter2@127.0.0.1:6379/0"})
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mysql://root:pw@db:3306/x", "mysql://root:***@db:3306/x"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("mysql://root@db/x", "mysql://root@db/x"),
        ("mysql://u:p%40ss@[::1]:3306/x", "mysql://u:***@[::1]:3306/x"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
