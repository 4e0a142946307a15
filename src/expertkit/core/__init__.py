"""Layer 0: errors, config loading, the conversation schema, run folders. Never imports torch."""
