"""Load tokenizers, models and adapters; chat templates; render conversations into ids + loss masks."""
