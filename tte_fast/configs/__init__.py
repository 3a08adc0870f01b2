"""Shipped configs: tiny model configs and the Qwen-VL chat template."""
