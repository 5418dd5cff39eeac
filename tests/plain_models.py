"""Plain smp / torchvision / timm models built from an exported checkpoint's metadata alone: no
sonostream model code, as a user outside sonostream would (README "Using the weights elsewhere")."""
from __future__ import annotations

import torch


def recorded_input(pixels: torch.Tensor, recipe: dict) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> network input, from the stored ``preprocessing`` only."""
    mean = torch.tensor(recipe["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(recipe["std"]).view(1, -1, 1, 1)
    return (pixels.float() / recipe["pixel_max"] - mean) / std


def plain_unet(meta: dict, state_dict: dict):
    """``smp.Unet(**meta["smp"])`` holding ``state_dict`` (strict), in eval mode."""
    import segmentation_models_pytorch as smp
    args = dict(meta["smp"])
    if "smp_register" in meta:   # arch tiny: smp has no ResNet-10; register it under our own name
        from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
        from torchvision.models import resnet
        reg = meta["smp_register"]
        args["encoder_name"] = "plain-test-" + reg["name"]
        smp.encoders.encoders[args["encoder_name"]] = {
            "encoder": ResNetEncoder, "pretrained_settings": {},
            "params": {"out_channels": reg["out_channels"], "block": getattr(resnet, reg["block"]),
                       "layers": reg["layers"]}}
    net = smp.Unet(**args)
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


def plain_torchvision(meta: dict, state_dict: dict):
    """A torchvision ResNet of ``block``/``layers`` with an ``in_chans`` stem -> a function giving
    its layer4 feature map."""
    from torchvision.models import resnet
    net = resnet.ResNet(getattr(resnet, meta["block"]), meta["layers"])
    net.conv1 = torch.nn.Conv2d(meta["in_chans"], 64, 7, 2, 3, bias=False)
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    net.eval()
    return lambda x: net.layer4(net.layer3(net.layer2(net.layer1(
        net.maxpool(net.relu(net.bn1(net.conv1(x))))))))


def plain_timm(meta: dict, state_dict: dict):
    """timm's ResNet of ``arch`` (strict) -> its ``forward_features``."""
    import timm
    net = timm.create_model(meta["arch"], in_chans=meta["in_chans"], num_classes=0, global_pool="")
    net.load_state_dict(state_dict, strict=True)
    return net.eval().forward_features
