"""Continuous batching and the OpenAI-compatible server: slots (device), engine (host loop), prefill and the prefix
cache, requests, the API's bodies, the Starlette app, Prometheus metrics, uvicorn.

Imports: `decoding` and everything below it; `checkpoints` for loading.
"""
