"""A real llama.cpp server (xllamacpp, a tiny local GGUF) for the integration tests."""
