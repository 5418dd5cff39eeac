"""Models: the ResNet encoder (shared by pretraining and segmentation) and the pretext heads."""
from .encoder import ARCHS, EncoderConfig, ResNetEncoder, export_encoder, load_encoder
from .heads import HeadsConfig, IOHead, MIRDecoder, PMHead
from .pretext import PretrainModel

__all__ = ["ARCHS", "EncoderConfig", "HeadsConfig", "IOHead", "MIRDecoder", "PMHead",
           "PretrainModel", "ResNetEncoder", "export_encoder", "load_encoder"]
