"""SAT-Nano / SAT-Pro: the authors' key layout, strict loading, and the forward against an independent
functional reference (written from the key names with torch.nn.functional) on a real CT window."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptseg.errors import CheckpointError, InputError
from promptseg.models.official_sat import (OfficialSAT, load_official_sat, random_sat_state_dict, sat_layout,
                                           sat_modality, sat_to_native)

CROP = (64, 64, 32)


def _ct_window(shared_data) -> torch.Tensor:
    img = nib.load(str(shared_data / "ct_abdomen_pelvis" / "image.nii.gz")).get_fdata()[20:84, 20:84, 40:72]
    img = np.clip(img, -500, 1000)
    return torch.tensor((img - img.mean()) / img.std(), dtype=torch.float32)[None, None]


@pytest.mark.parametrize("variant,keys,params", [("nano", 280, 109_194_624), ("pro", 368, 475_561_344)])
def test_layout_of_published_variants(variant, keys, params):
    # counts of the authors' Maskformer('UNET' / 'UNET-L').state_dict() (aliases included) and parameters
    with torch.device("meta"):
        model = OfficialSAT(variant)
    layout = sat_layout(model)
    assert len(layout) == keys
    assert sum(p.numel() for p in model.parameters()) == params
    assert layout["backbone.encoder.stages.0.0.convs.0.all_modules.0.weight"] == layout[
        "backbone.encoder.stages.0.0.convs.0.conv.weight"]
    assert "transformer_decoder.layers.5.norm1.weight" in layout  # unused in the forward, present in files
    assert not any(k.startswith("query_proj") for k in layout)


def test_strict_keys_list_missing_unused_and_misshaped():
    sd = random_sat_state_dict("nano", crop=CROP)
    sd.pop("module.mask_embed_proj.0.bias")
    sd["module.extra.weight"] = torch.zeros(2)
    sd["module.projection_layer.2.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        sat_to_native(sd, OfficialSAT("nano", crop=CROP))
    msg = str(err.value)
    assert "missing 1: mask_embed_proj.0.bias" in msg
    assert "unexpected 1: extra.weight" in msg
    assert "mis-shaped 1: projection_layer.2.weight (3, 3) (expected (768, 768))" in msg


def test_alias_twins_must_agree():
    sd = random_sat_state_dict("nano", crop=CROP)
    key = "module.backbone.decoder.stages.0.convs.1.all_modules.1.bias"
    sd[key] = sd[key] + 1
    with pytest.raises(CheckpointError, match="differs from its twin"):
        sat_to_native(sd, OfficialSAT("nano", crop=CROP))


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        load_official_sat(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_official_sat(bad)
    f = tmp_path / "nano.pth"
    torch.save({"model_state_dict": random_sat_state_dict("nano", crop=CROP)}, f)
    with pytest.raises(CheckpointError, match="is SAT-nano, not SAT-pro"):
        load_official_sat(f, variant="pro", crop=CROP)


# ---- independent reference: the authors' forward, re-derived from the key names ---------------------
def _block(sd, p, x, stride):
    x = F.conv3d(x, sd[p + "conv.weight"], sd[p + "conv.bias"], stride, 1)
    x = F.instance_norm(x, weight=sd[p + "norm.weight"], bias=sd[p + "norm.bias"], eps=1e-5)
    return F.leaky_relu(x, 0.01)


def _stack(sd, p, x, n, stride=1):
    for j in range(n):
        x = _block(sd, f"{p}convs.{j}.", x, stride if j == 0 else 1)
    return x


def _pos(grid, dim):
    ch = math.ceil(dim / 6) * 2
    out = np.zeros((*grid, 3 * ch))
    for (i, j, k) in np.ndindex(*grid):
        for a, v in enumerate((i, j, k)):
            for f in range(ch // 2):
                w = v / 10000 ** (2 * f / ch)
                out[i, j, k, a * ch + 2 * f], out[i, j, k, a * ch + 2 * f + 1] = math.sin(w), math.cos(w)
    return torch.tensor(out[..., :dim].reshape(-1, dim), dtype=torch.float32)


def _reference(sd, image, queries, n_conv, grid):
    sd = {k[len("module."):]: v for k, v in sd.items()}
    x = image.repeat(1, 3, 1, 1, 1)
    skips = []
    for s in range(6):
        x = _stack(sd, f"backbone.encoder.stages.{s}.0.", x, n_conv, 1 if s == 0 else 2)
        skips.append(x)
    for s in range(5):
        up = F.conv_transpose3d(x, sd[f"backbone.decoder.transpconvs.{s}.weight"],
                                sd[f"backbone.decoder.transpconvs.{s}.bias"], 2)
        x = _stack(sd, f"backbone.decoder.stages.{s}.", torch.cat([up, skips[4 - s]], 1), n_conv)
    feats = torch.cat([F.avg_pool3d(t, 2 ** (5 - i)) for i, t in enumerate(skips[:5])] + [skips[5]], 1)
    tokens = feats.flatten(2)[0].T  # [T, C]
    mem = F.gelu(F.linear(F.gelu(F.linear(tokens, sd["projection_layer.0.weight"], sd["projection_layer.0.bias"])),
                          sd["projection_layer.2.weight"], sd["projection_layer.2.bias"]))
    key = mem + _pos(grid, 768)
    q = queries
    for i in range(6):
        p = f"transformer_decoder.layers.{i}."
        h = F.layer_norm(q, (768,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        w, b = sd[p + "multihead_attn.in_proj_weight"], sd[p + "multihead_attn.in_proj_bias"]
        qq, kk, vv = F.linear(h, w[:768], b[:768]), F.linear(key, w[768:1536], b[768:1536]), F.linear(mem, w[1536:], b[1536:])
        heads = []
        for hd in range(8):
            sl = slice(96 * hd, 96 * (hd + 1))
            att = torch.softmax(qq[:, sl] @ kk[:, sl].T / math.sqrt(96), -1)
            heads.append(att @ vv[:, sl])
        q = q + F.linear(torch.cat(heads, 1), sd[p + "multihead_attn.out_proj.weight"], sd[p + "multihead_attn.out_proj.bias"])
        h = F.layer_norm(q, (768,), sd[p + "norm3.weight"], sd[p + "norm3.bias"])
        q = q + F.linear(F.relu(F.linear(h, sd[p + "linear1.weight"], sd[p + "linear1.bias"])),
                         sd[p + "linear2.weight"], sd[p + "linear2.bias"])
    q = F.layer_norm(q, (768,), sd["transformer_decoder.norm.weight"], sd["transformer_decoder.norm.bias"])
    m = F.gelu(F.linear(F.gelu(F.linear(q, sd["mask_embed_proj.0.weight"], sd["mask_embed_proj.0.bias"])),
                        sd["mask_embed_proj.2.weight"], sd["mask_embed_proj.2.bias"]))
    return torch.einsum("chwd,nc->nhwd", x[0], m)[None]


# Nano at its published widths; Pro's 3-convolution layout at reduced widths (475M random weights
# would cost the test minutes and 2 GB; the widths are checked by the layout test above)
@pytest.mark.parametrize("variant,n_conv,crop,kw", [
    ("nano", 2, CROP, {}),
    ("pro", 3, (64, 32, 32), {"features": (16, 16, 32, 32, 64, 64), "hidden": 96, "mask_mid": 48}),
])
def test_forward_matches_reference_on_real_ct(shared_data, tmp_path, variant, n_conv, crop, kw):
    sd = random_sat_state_dict(variant, seed=3, crop=crop, **kw)
    f = tmp_path / f"sat_{variant}.pth"
    torch.save({"model_state_dict": sd, "step": 1}, f)
    model = load_official_sat(f, crop=crop, **kw)
    image = _ct_window(shared_data)[..., :crop[0], :crop[1], :crop[2]]
    queries = torch.randn(4, 768, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.forward_embeddings(image, queries)
        sub = model.forward_embeddings(image, queries[[3, 0]])
        ref = _reference(sd, image, queries, n_conv, tuple(c // 32 for c in crop))
    assert got.shape == (1, 4, *crop)
    assert ref.std() > 1e-2  # the check is not vacuous
    assert (got - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())
    assert (sub - got[:, [3, 0]]).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())


def test_window_size_is_enforced():
    model = OfficialSAT("nano", crop=CROP, features=(4, 4, 8, 8, 8, 16), hidden=16, mask_mid=8).eval()
    with pytest.raises(InputError, match="expects windows of"):
        model.forward_embeddings(torch.zeros(1, 1, 32, 32, 32), torch.zeros(1, 768))
    with pytest.raises(InputError, match="queries"):
        model.forward_embeddings(torch.zeros(1, 1, *CROP), torch.zeros(1, 512))


def test_modality_spellings():
    assert sat_modality("CT") == "ct"
    assert sat_modality("MR") == "mri"
    assert sat_modality("t1") == "mri"
    assert sat_modality("PET") == "pet"
