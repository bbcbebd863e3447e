"""Chat back ends for generating instruction data (notebook 02): one interface, ``complete(messages) -> str``.

- ``OpenAIChat``: any OpenAI-compatible server through the ``openai`` package -- the OpenAI API, or a
  local vLLM (``vllm serve MODEL`` -> ``http://localhost:8000/v1``) or Ollama (``http://localhost:11434/v1``)
  server. Configured from the environment (``from_env``):

  ``COURSE_LLM_MODEL``     the model name (required to enable this back end);
  ``COURSE_LLM_BASE_URL``  the server (unset: the OpenAI API);
  ``COURSE_LLM_API_KEY``   the key (falls back to ``OPENAI_API_KEY``; local servers need none).

  The key is read from the environment only: it is never an argument, never printed, never part of
  ``repr``/``str``, and the back end refuses to be pickled.
- ``OfflineChat``: wraps any callable ``messages -> str``; the course's offline generator grounded in
  a Shapes World scene's truth (``course_utils.world.instruct.offline_backend``) is one.

Nothing here touches the network at import time; tests use a fake transport
(``httpx.MockTransport``) through ``http_client=``.
"""
from __future__ import annotations

import os
from typing import Callable, Protocol, Sequence

ENV_MODEL = "COURSE_LLM_MODEL"
ENV_BASE_URL = "COURSE_LLM_BASE_URL"
ENV_API_KEY = "COURSE_LLM_API_KEY"
ROLES = ("system", "user", "assistant")


class ChatBackend(Protocol):
    """What the data pipeline needs from a chat model."""

    name: str

    def complete(self, messages: Sequence[dict]) -> str: ...


def check_messages(messages: Sequence[dict]) -> list[dict]:
    """``[{"role": "system" | "user" | "assistant", "content": str}, ...]`` ending with a user turn."""
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {k} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    if not out or out[-1]["role"] != "user":
        raise ValueError("the last message must be the user's query (role 'user')")
    return out


class OpenAIChat:
    """An OpenAI-compatible chat model (``openai`` package): the OpenAI API, vLLM, Ollama, ...

    ``http_client`` is handed to ``openai.OpenAI`` (tests pass an ``httpx.Client`` with a mock transport).
    """

    def __init__(self, model: str, base_url: str | None = None, *, temperature: float = 0.2, max_tokens: int = 1024,
                 timeout: float = 60.0, max_retries: int = 2, http_client=None):
        import openai

        if not model:
            raise ValueError(f"give the model name (or set {ENV_MODEL})")
        key = os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        self._key_source = ENV_API_KEY if os.environ.get(ENV_API_KEY) else ("OPENAI_API_KEY" if key else None)
        if key is None:
            if base_url is None:
                raise ValueError(f"no API key: set {ENV_API_KEY} (or OPENAI_API_KEY) in the environment, or point "
                                 f"{ENV_BASE_URL} at a local server (vLLM, Ollama) that needs none")
            key = "EMPTY"  # local OpenAI-compatible servers ignore the key
        self.name, self.model, self.base_url = f"openai-compatible:{model}", model, base_url
        self.temperature, self.max_tokens = temperature, max_tokens
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries,
                                     http_client=http_client)

    @classmethod
    def from_env(cls, **kwargs) -> "OpenAIChat | None":
        """The back end the environment describes, or None when ``COURSE_LLM_MODEL`` is unset."""
        model = os.environ.get(ENV_MODEL)
        if not model:
            return None
        return cls(model, os.environ.get(ENV_BASE_URL) or None, **kwargs)

    def complete(self, messages: Sequence[dict]) -> str:
        response = self._client.chat.completions.create(model=self.model, messages=check_messages(messages),
                                                        temperature=self.temperature, max_tokens=self.max_tokens)
        content = response.choices[0].message.content if response.choices else None
        if not content:
            raise RuntimeError(f"{self.name} returned an empty answer (finish_reason: "
                               f"{response.choices[0].finish_reason if response.choices else 'no choices'})")
        return content

    def __repr__(self) -> str:
        key = f"${self._key_source}" if self._key_source else "none"
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r}, api_key=<from {key}>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("OpenAIChat holds an API key and is not picklable; rebuild it with OpenAIChat.from_env()")


class OfflineChat:
    """A back end from any callable ``messages -> str`` (deterministic generators, recorded answers)."""

    def __init__(self, generate: Callable[[list[dict]], str], name: str = "offline"):
        if not callable(generate):
            raise ValueError(f"generate must be a callable messages -> str, got {type(generate).__name__}")
        self.name, self._generate = name, generate

    def complete(self, messages: Sequence[dict]) -> str:
        out = self._generate(check_messages(messages))
        if not isinstance(out, str) or not out:
            raise RuntimeError(f"{self.name} back end returned {out!r:.60} instead of a non-empty string")
        return out

    def __repr__(self) -> str:
        return f"OfflineChat(name={self.name!r})"


def pick_backend(fallback: ChatBackend, **kwargs) -> ChatBackend:
    """``OpenAIChat.from_env()`` when the environment names a model, otherwise ``fallback``."""
    return OpenAIChat.from_env(**kwargs) or fallback
