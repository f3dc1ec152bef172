"""Backbones: U-Net-shaped networks that expose their stages and call conditioner hooks.

Importing this package is cheap; `UNet` and `SwinUNETRBackbone` are loaded on first access
(the Swin backbone pulls in MONAI's transformer blocks).
"""
from .base import Backbone, BackboneOutput, match_batch

__all__ = ["Backbone", "BackboneOutput", "match_batch", "UNet", "SwinUNETRBackbone", "SegResNetBackbone"]


def __getattr__(name: str):
    if name == "UNet":
        from .unet import UNet

        return UNet
    if name == "SwinUNETRBackbone":
        from .swinunetr import SwinUNETRBackbone

        return SwinUNETRBackbone
    if name == "SegResNetBackbone":
        from .segresnet import SegResNetBackbone

        return SegResNetBackbone
    raise AttributeError(name)
