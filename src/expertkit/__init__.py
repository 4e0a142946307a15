"""expertkit: turn an open LLM into a private domain expert and keep it one."""

__version__ = "0.1.0"
