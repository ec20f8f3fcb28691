"""Whole models composed from layers (as Haiku keeps ``nets`` apart from modules)."""
from jnn.nets.resnet import residual_block, resnet

__all__ = ["residual_block", "resnet"]
