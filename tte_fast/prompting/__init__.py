"""Prompts and batches: the one prompt renderer that training and inference share, the processor
batches it becomes (and the embedding forward over them), and splitting batches into chunks."""
