"""Whole models built from layers; every public name is re-exported from ``jnn``."""
from jnn.nets.decoder_lm import decoder_lm
from jnn.nets.encoder_decoder import encoder_decoder
from jnn.nets.vit import vit_classifier
