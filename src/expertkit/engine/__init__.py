"""Text generation behind one `Engine` protocol: a local transformers model, or any OpenAI-compatible URL."""
