"""Settings: defaults load; router.toml, profiles and FLEET_* apply in turn; bad values name file and key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fleet
from fleet.errors import ConfigError
from fleet.providers.config import effective_base_url
from fleet.router.config import default_router_settings
from fleet.settings import default_config_dir, load_settings, mask_url, parse_rate


def _copy_config(tmp_path: Path) -> Path:
    root = default_config_dir()
    shutil.copytree(root / "config", tmp_path / "config")
    shutil.copytree(root / "queues", tmp_path / "queues")
    return tmp_path


def test_defaults_load_with_every_queue_and_a_chain_per_tier() -> None:
    settings = load_settings(env={})
    assert set(settings.queues) == {"router", "mini", "standard", "full", "fast", "batch", "escalations"}
    for tier in ("mini", "standard", "full", "fast"):
        assert len(settings.tier(tier).links()) >= 2
    assert settings.visibility_timeout() > max(q.timeout_s for q in settings.queues.values())
    assert settings.mock.enabled is False


def test_demo_profile_points_providers_at_the_mock() -> None:
    settings = load_settings(profile="demo", env={"FLEET_MOCK__URL": "http://127.0.0.1:9"})
    assert settings.mock.enabled
    assert effective_base_url(settings.providers["openai"], settings.mock) == "http://127.0.0.1:9/v1"
    assert effective_base_url(settings.providers["anthropic"], settings.mock) == "http://127.0.0.1:9"
    assert settings.providers["openai"].api_key is not None


def test_env_overrides_use_toml_values() -> None:
    settings = load_settings(
        env={"FLEET_QUEUES__FULL__CONCURRENCY": "9", "FLEET_REDIS_URL": "redis://h:6379/2"}
    )
    assert settings.queues["full"].concurrency == 9
    assert settings.broker.redis_url == "redis://h:6379/2"
    rabbit = load_settings(
        env={"FLEET_BROKER_URL": "amqp://guest:pw@rabbit:5672//", "FLEET_REDIS_URL": "redis://h"}
    )
    assert (rabbit.broker.url, rabbit.broker.redis_url) == ("amqp://guest:pw@rabbit:5672//", "redis://h")
    assert rabbit.masked()["broker"]["url"] == "amqp://guest:***@rabbit:5672//"


def test_api_keys_come_from_the_named_variable_and_are_masked() -> None:
    settings = load_settings(env={"OPENAI_API_KEY": "sk-canary-123"})
    assert settings.providers["openai"].api_key is not None
    assert settings.providers["openai"].api_key.get_secret_value() == "sk-canary-123"
    assert "sk-canary" not in str(settings.masked())
    assert "sk-canary" not in repr(settings)


@pytest.mark.parametrize(
    ("file", "old", "new", "key"),
    [
        ("queues/full.toml", 'rate_limit = "300/m"', 'rate_limit = "10/x"', "rate_limit"),
        ("queues/mini.toml", "concurrency = 16", "concurrency = 0", "concurrency"),
        ("queues/mini.toml", "concurrency = 16", "concurrency = -3", "concurrency"),
        ("queues/fast.toml", 'rate_limit = "3000/m"', 'rate_limit = "0/m"', "rate_limit"),
        ("queues/standard.toml", "timeout_s = 180", 'timeout_s = "long"', "timeout_s"),
        (
            "config/router.toml",
            "fast_threshold_ms = 2000",
            "fast_threshold_ms = -1",
            "router.fast_threshold_ms",
        ),
        (
            "config/router.toml",
            "many_files = 4",
            'many_files = "four"',
            "router.heuristic.thresholds.many_files",
        ),
        ("config/router.toml", "\nhard = 2.0", "\nhard = 2.0\nsoft = 1.0", "router.heuristic.weights.soft"),
        ("config/router.toml", "\nhard = [", "\nhard = 3\nnot_hard = [", "router.heuristic.keywords.hard"),
        ("config/fleet.toml", "max_deliveries = 5", "max_deliveries = 0", "limits.max_deliveries"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, file: str, old: str, new: str, key: str) -> None:
    root = _copy_config(tmp_path)
    path = root / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_settings(config_dir=root, env={})
    assert info.value.file == str(path)
    assert key in str(info.value)


def test_unknown_key_and_unknown_chain_model_are_refused(tmp_path: Path) -> None:
    root = _copy_config(tmp_path)
    (root / "queues" / "mini.toml").write_text('concurency = 3\nchain = ["openai:gpt-4.1-mini"]\n')
    with pytest.raises(ConfigError, match="concurency: unknown key"):
        load_settings(config_dir=root, env={})
    (root / "queues" / "mini.toml").write_text('chain = ["openai:gpt-9"]\n')
    with pytest.raises(ConfigError, match="no model 'gpt-9'"):
        load_settings(config_dir=root, env={})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"FLEET_QUEUES__MINI__POOL": "fibers"})
    assert "FLEET_QUEUES__MINI__POOL" in str(info.value)


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_settings(profile="nope", env={})


def test_parse_rate_and_mask_url() -> None:
    assert parse_rate("600/m") == 10.0
    assert parse_rate("2/s") == 2.0
    for bad in ("10/x", "0/m", "-1/m", "ten/m"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:pw@host/1") == "rediss://user:***@host/1"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"


def test_outcome_policy_is_data_with_defaults() -> None:
    settings = load_settings(env={"FLEET_RETRY__POLICY__TRUNCATED": '"retry"'})
    assert settings.retry.action("truncated") == "retry"
    assert settings.retry.action("auth") == "skip_provider"
    assert settings.retry.action("server_error") == "retry"
    with pytest.raises(ConfigError, match="unknown outcome codes"):
        load_settings(env={"FLEET_RETRY__POLICY__TEAPOT": '"retry"'})


def test_the_router_table_comes_from_router_toml_under_profile_and_env(tmp_path: Path) -> None:
    # Given a config directory whose router.toml sets the threshold, and a profile that sets it again
    root = _copy_config(tmp_path)
    router_file = root / "config" / "router.toml"
    router_file.write_text(
        router_file.read_text().replace("fast_threshold_ms = 2000", "fast_threshold_ms = 1500")
    )
    fleet_file = root / "config" / "fleet.toml"
    fleet_file.write_text(fleet_file.read_text() + "\n[profiles.snappy.router]\nfast_threshold_ms = 900\n")
    # Then the file, the profile and a variable each win over the one before
    assert load_settings(config_dir=root, env={}).router.fast_threshold_ms == 1500
    assert load_settings(config_dir=root, profile="snappy", env={}).router.fast_threshold_ms == 900
    env = {"FLEET_ROUTER__FAST_THRESHOLD_MS": "700"}
    assert load_settings(config_dir=root, profile="snappy", env=env).router.fast_threshold_ms == 700


def test_a_partial_or_missing_router_toml_keeps_the_shipped_tables(tmp_path: Path) -> None:
    # Given a config directory without router.toml: the shipped table routes
    root = _copy_config(tmp_path)
    router_file = root / "config" / "router.toml"
    router_file.unlink()
    assert load_settings(config_dir=root, env={}).router == default_router_settings()
    # When its router.toml sets one key and one list, Then only those change
    router_file.write_text(
        '[router]\nclassifier = "llm"\n[router.heuristic.keywords]\nstakes = ["invoice*"]\n'
    )
    router = load_settings(config_dir=root, env={}).router
    shipped = default_router_settings()
    assert router.classifier == "llm" and router.heuristic.keywords.stakes == ["invoice*"]
    assert router.heuristic.keywords.hard == shipped.heuristic.keywords.hard
    assert router.heuristic.weights == shipped.heuristic.weights
    assert router.fast_threshold_ms == shipped.fast_threshold_ms


def test_a_router_table_left_in_fleet_toml_still_applies(tmp_path: Path) -> None:
    # Given a config directory from before router.toml: its [router] table lives in fleet.toml
    root = _copy_config(tmp_path)
    (root / "config" / "router.toml").unlink()
    fleet_file = root / "config" / "fleet.toml"
    fleet_file.write_text(fleet_file.read_text() + "\n[router]\nfast_threshold_ms = 1200\n")
    assert load_settings(config_dir=root, env={}).router.fast_threshold_ms == 1200
    # And a bad value there names fleet.toml, not router.toml
    fleet_file.write_text(fleet_file.read_text().replace("fast_threshold_ms = 1200", "fast_threshold_ms = 0"))
    with pytest.raises(ConfigError) as info:
        load_settings(config_dir=root, env={})
    assert info.value.file.endswith("fleet.toml") and info.value.key == "router.fast_threshold_ms"


def test_router_toml_with_another_table_is_refused(tmp_path: Path) -> None:
    root = _copy_config(tmp_path)
    router_file = root / "config" / "router.toml"
    router_file.write_text(router_file.read_text() + "\n[broker]\nurl = 'redis://h'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_dir=root, env={})
    assert info.value.file == str(router_file) and info.value.key == "broker"


@pytest.mark.parametrize(
    "module", ["fleet.router", "fleet.router.config", "fleet.retry", "fleet.providers.config"]
)
def test_each_owners_settings_load_without_fleet_settings(module: str) -> None:
    # The owners' modules sit below fleet.settings, which imports them: importing one of them must
    # not load fleet.settings (that would be a cycle waiting to happen).
    code = f"import sys, {module}; assert 'fleet.settings' not in sys.modules, sorted(sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(fleet.__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)


def test_a_batch_lane_whose_jobs_could_not_fall_back_in_time_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"min_deadline_s \(100\) must be at least max_wait_s \+ poll_s"):
        load_settings(env={}, overrides={"batch.min_deadline_s": 100})
