"""Training recipes that read top to bottom (sft.py), on transformers + peft."""
