"""Instruction data: formats → conversations, dataset_info.json, checks, preparation and splits."""
