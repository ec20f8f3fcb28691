"""Whole models composed from layers (as Haiku keeps ``nets`` apart from modules); every public
name is re-exported from ``jnn``."""
from jnn.nets.decoder_lm import decoder_lm
from jnn.nets.encoder_decoder import encoder_decoder
from jnn.nets.resnet import residual_block, resnet
from jnn.nets.vit import vit_classifier

__all__ = ["decoder_lm", "encoder_decoder", "residual_block", "resnet", "vit_classifier"]
