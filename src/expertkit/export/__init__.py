"""Export: merge a LoRA adapter into its base, write sharded safetensors, tokenizer, chat template and a model card."""
