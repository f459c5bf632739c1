"""Serving trained adapters: one base model in memory, many adapters on it."""
