"""Model builders: ``create_model(name, num_classes=..., attn=..., asr=..., both=...)``."""
from .cifar_resnet import Bottleneck, BasicBlock, CifarResNet, ModelConfig, Stage, build_model, create_model, list_models

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "ModelConfig", "Stage", "build_model", "create_model", "list_models"]
