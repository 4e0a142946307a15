"""Grounded answers: a knowledge base of the user's documents and live web search, with citations.

extract (files, HTML) -> chunk -> embed -> vector store; web search -> robots + SSRF-safe fetch -> the same path;
hybrid retrieval (BM25 + vectors) -> a grounded prompt answered through any `Engine`.
"""
