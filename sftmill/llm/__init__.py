"""The LLM layer: requests and their keys, transport (an HTTP worker process), limits, the call
journal and cache, budgets, the Batch API, and the two backends (embedded llama.cpp, OpenAI-compatible
servers) behind one interface."""
