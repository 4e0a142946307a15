"""Evaluation: is the tuned model better than the base on unseen questions, did it forget, does retrieval help?"""
