"""The web side of retrieval: search providers, robots.txt, and fetching that refuses internal addresses."""
