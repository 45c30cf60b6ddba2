"""The providers' settings: where a provider's calls go and which key they carry, mock on or off."""

from __future__ import annotations

from fleet.providers.config import MockSettings, ProviderSettings, effective_base_url, resolve_api_keys

OPENAI = ProviderSettings(kind="openai-compatible", base_url="https://api.openai.com/v1/")
ANTHROPIC = ProviderSettings(kind="anthropic", base_url="https://api.anthropic.com")


def test_calls_go_to_the_provider_unless_a_running_mock_is_on() -> None:
    assert effective_base_url(OPENAI, MockSettings()) == "https://api.openai.com/v1"
    # A mock that is on but not started yet (no URL) does not redirect anything
    assert effective_base_url(OPENAI, MockSettings(enabled=True)) == "https://api.openai.com/v1"
    assert (
        effective_base_url(ANTHROPIC, MockSettings(url="http://127.0.0.1:9")) == "https://api.anthropic.com"
    )


def test_a_running_mock_takes_every_call_in_the_providers_wire_format() -> None:
    mock = MockSettings(enabled=True, url="http://127.0.0.1:9/")
    assert effective_base_url(OPENAI, mock) == "http://127.0.0.1:9/v1"
    assert effective_base_url(ANTHROPIC, mock) == "http://127.0.0.1:9"


def test_keys_come_from_the_named_variable_and_the_mock_fills_the_gaps() -> None:
    # Given one provider whose key variable is set and one whose variable is not
    providers = {
        "oa": ProviderSettings(kind="openai-compatible", base_url="https://x/v1", api_key_env="OA_KEY"),
        "an": ProviderSettings(kind="anthropic", base_url="https://y", api_key_env="AN_KEY"),
    }
    # When keys are resolved with the mock off, Then only the set one has a key
    resolve_api_keys(providers, MockSettings(), {"OA_KEY": "sk-1"})
    assert providers["oa"].api_key is not None and providers["oa"].api_key.get_secret_value() == "sk-1"
    assert providers["an"].api_key is None
    # And with the mock on, the other gets a placeholder the adapters can send
    resolve_api_keys(providers, MockSettings(enabled=True), {"OA_KEY": "sk-1"})
    assert providers["oa"].api_key.get_secret_value() == "sk-1"
    assert providers["an"].api_key is not None and providers["an"].api_key.get_secret_value() == "mock-key-an"
