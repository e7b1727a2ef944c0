"""``heron serve``: the OpenAI, Anthropic and Ollama APIs on one port."""
