"""course_utils.chat: the OpenAI-compatible client (through a fake transport, never the network) and the
offline back end behind the same interface."""
import json
import logging
import pickle

import httpx
import pytest

from course_utils import chat

KEY = "sk-test-0123456789abcdefSECRET"


def _transport(seen: list, content: str = "Question:\nHow many?\n===\nAnswer:\nTwo.\n==="):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "recorded",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        return httpx.Response(200, json=body)
    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.fixture
def env(monkeypatch):
    for name in (chat.ENV_MODEL, chat.ENV_BASE_URL, chat.ENV_API_KEY, "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


MESSAGES = [{"role": "system", "content": "You are an AI visual assistant."},
            {"role": "user", "content": "A red circle.\n\nred circle: [0.1, 0.1, 0.4, 0.4]"}]


def test_the_client_sends_the_messages_and_model_and_keeps_the_key_secret(env, caplog):
    env.setenv(chat.ENV_MODEL, "gpt-4o-mini")
    env.setenv(chat.ENV_API_KEY, KEY)
    seen = []
    caplog.set_level(logging.DEBUG)
    backend = chat.OpenAIChat.from_env(http_client=_transport(seen))
    answer = backend.complete(MESSAGES)
    assert answer.endswith("Answer:\nTwo.\n===")
    (request,) = seen
    assert request.url == "https://api.openai.com/v1/chat/completions"
    sent = json.loads(request.content)
    assert sent["model"] == "gpt-4o-mini" and sent["messages"] == MESSAGES
    assert request.headers["authorization"] == f"Bearer {KEY}"       # the key goes to the server only
    for text in (repr(backend), str(backend), caplog.text, str(vars(backend).get("model"))):
        assert KEY not in text
    assert f"${chat.ENV_API_KEY}" in repr(backend)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(backend)


def test_a_local_server_needs_no_key(env):
    env.setenv(chat.ENV_MODEL, "llama3.2")
    env.setenv(chat.ENV_BASE_URL, "http://localhost:11434/v1")
    seen = []
    backend = chat.OpenAIChat.from_env(http_client=_transport(seen))
    backend.complete(MESSAGES)
    assert str(seen[0].url) == "http://localhost:11434/v1/chat/completions"
    assert json.loads(seen[0].content)["model"] == "llama3.2"
    assert "api_key=<from none>" in repr(backend)


def test_missing_configuration_is_explained(env):
    assert chat.OpenAIChat.from_env() is None
    env.setenv(chat.ENV_MODEL, "gpt-4o-mini")
    with pytest.raises(ValueError, match=chat.ENV_API_KEY):
        chat.OpenAIChat.from_env()


def test_empty_answers_and_bad_messages_raise(env):
    env.setenv(chat.ENV_API_KEY, KEY)
    backend = chat.OpenAIChat("m", http_client=_transport([], content=""))
    with pytest.raises(RuntimeError, match="empty answer"):
        backend.complete(MESSAGES)
    with pytest.raises(ValueError, match="last message"):
        backend.complete(MESSAGES[:1])
    with pytest.raises(ValueError, match="role"):
        backend.complete([{"role": "robot", "content": "hi"}])


def test_offline_backend_and_pick_backend(env):
    offline = chat.OfflineChat(lambda messages: messages[-1]["content"].upper(), name="echo")
    assert offline.complete(MESSAGES).startswith("A RED CIRCLE.")
    assert chat.pick_backend(offline) is offline                       # no model in the environment
    env.setenv(chat.ENV_MODEL, "gpt-4o-mini")
    env.setenv(chat.ENV_API_KEY, KEY)
    assert isinstance(chat.pick_backend(offline, http_client=_transport([])), chat.OpenAIChat)
    with pytest.raises(RuntimeError, match="non-empty string"):
        chat.OfflineChat(lambda m: None).complete(MESSAGES)
    with pytest.raises(ValueError, match="callable"):
        chat.OfflineChat("not a function")
