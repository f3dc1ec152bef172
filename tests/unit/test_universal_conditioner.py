"""Universal Model conditioner (and its one-hot twin): dynamic head, order, subsets, growth, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptseg.models.backbones.unet import UNet
from promptseg.models.build import build_model
from promptseg.models.conditioners.onehot import OneHotConditioner
from promptseg.models.conditioners.universal import UniversalConditioner
from promptseg.models.segmenter import PromptError, UniversalSegmenter

NAMES = ["spleen", "liver", "pancreas", "left kidney"]
SIZE = (32, 32, 16)


def make_model(head: str = "mlp", names=NAMES, seed: int = 0, text_dim: int = 24) -> UniversalSegmenter:
    torch.manual_seed(seed)
    cond = UniversalConditioner(names, embeddings=torch.randn(len(names), text_dim), head=head)
    return UniversalSegmenter(UNet(preset="small"), cond).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 1, *SIZE)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("head", ["mlp", "shared"])
def test_153_dynamic_parameters_per_class_and_output_shape(head, image):
    model = make_model(head)
    cond = model.conditioner
    assert cond.num_params == 153 == (8 * 8 + 8) + (8 * 8 + 8) + (8 * 1 + 1)
    if head == "mlp":
        assert len(cond.controllers) == len(NAMES)
        assert cond.controllers[0][0].in_features == 512 and cond.controllers[0][-1].out_features == 153
    else:
        assert tuple(cond.controller.weight.shape) == (153, 512, 1, 1, 1)
    assert cond.embeddings.shape == (4, 24) and "embeddings" in cond.state_dict()
    with torch.no_grad():
        out = model(image)
    assert out.shape == (2, 4, *SIZE)


@pytest.mark.parametrize("head", ["mlp", "shared"])
def test_order_follows_the_prompts_and_subsets_match_the_full_set(head, image):
    model = make_model(head)
    with torch.no_grad():
        full = model(image)
        ab = model(image, ["liver", "pancreas"])
        ba = model(image, ["pancreas", "liver"])
        one = model(image, ["left kidney"])
    assert torch.allclose(ab, ba.flip(1), atol=1e-6)
    assert torch.allclose(ab, full[:, 1:3], atol=1e-5)
    assert torch.allclose(one[:, 0], full[:, 3], atol=1e-5)
    assert not torch.allclose(full[:, 0], full[:, 1])  # classes do differ


def test_dynamic_head_uses_the_official_parameter_layout():
    """theta = [w1 (8x8, out-major), w2 (8x8), w3 (1x8), b1 (8), b2 (8), b3 (1)]."""
    torch.manual_seed(0)
    cond = UniversalConditioner(["a", "b"], embeddings=torch.randn(2, 5))
    feats = torch.randn(2, 8, 3, 4, 5)
    theta = torch.randn(2, 2, 153)
    out = cond.dynamic_head(feats, theta)
    for b in range(2):
        for k in range(2):
            t = theta[b, k]
            w1, w2, w3 = t[:64].view(8, 8), t[64:128].view(8, 8), t[128:136].view(1, 8)
            b1, b2, b3 = t[136:144], t[144:152], t[152:153]
            x = feats[b].flatten(1)
            h = F.relu(w1 @ x + b1[:, None])
            h = F.relu(w2 @ h + b2[:, None])
            ref = (w3 @ h + b3[:, None]).view(3, 4, 5)
            assert torch.allclose(out[b, k], ref, atol=1e-4)


def test_dynamic_head_equals_the_official_grouped_conv():
    """Official heads_forward: per sample, F.conv3d with groups = number of classes."""
    torch.manual_seed(0)
    cond = UniversalConditioner(["a", "b", "c"], embeddings=torch.randn(3, 5))
    feats = torch.randn(2, 8, 4, 6, 2)
    theta = torch.randn(2, 3, 153)
    ours = cond.dynamic_head(feats, theta)
    for b in range(2):
        p = torch.split(theta[b], [64, 64, 8, 8, 8, 1], dim=1)
        ws = [p[0].reshape(24, 8, 1, 1, 1), p[1].reshape(24, 8, 1, 1, 1), p[2].reshape(3, 8, 1, 1, 1)]
        bs = [p[3].reshape(24), p[4].reshape(24), p[5].reshape(3)]
        x = feats[b : b + 1].repeat(3, 1, 1, 1, 1).reshape(1, -1, 4, 6, 2)
        for i, (w, bias) in enumerate(zip(ws, bs)):
            x = F.conv3d(x, w, bias, groups=3)
            x = F.relu(x) if i < 2 else x
        assert torch.allclose(ours[b], x[0], atol=1e-4)


def test_samples_are_independent_of_the_batch(image):
    model = make_model("mlp")
    with torch.no_grad():
        both = model(image, ["liver", "spleen"])
        alone = model(image[1:], ["liver", "spleen"])
    assert torch.allclose(both[1:], alone, atol=1e-5)


def test_adding_a_class_touches_nothing_else(image):
    model = make_model("mlp")
    cond = model.conditioner
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count = n_params(model)
    with torch.no_grad():
        old_out = model(image, ["liver"])
    cond.add_classes(["stomach"], torch.randn(1, 24))
    after = model.state_dict()
    for key, value in before.items():
        if key == "conditioner.embeddings":
            assert torch.equal(after[key][: len(NAMES)], value)
        else:
            assert torch.equal(after[key], value), key
    new_keys = set(after) - set(before)
    assert new_keys == {f"conditioner.controllers.{len(NAMES)}.{p}" for p in ("0.weight", "0.bias", "2.weight", "2.bias")}
    one_mlp = n_params(cond.controllers[0])
    assert n_params(model) - count == one_mlp == 512 * 256 + 256 + 256 * 153 + 153
    assert model.class_names[-1] == "stomach" and cond.embeddings.shape == (5, 24)
    with torch.no_grad():
        assert torch.allclose(model(image, ["liver"]), old_out)
        assert model(image, ["stomach", "liver"]).shape == (2, 2, *SIZE)


def test_shared_head_grows_only_the_embeddings():
    model = make_model("shared")
    count = n_params(model)
    model.conditioner.add_classes(["stomach"], torch.randn(1, 24))
    assert n_params(model) == count and model.conditioner.embeddings.shape[0] == 5


def test_adding_an_existing_class_is_refused():
    from promptseg.errors import ConfigError

    with pytest.raises(ConfigError):
        make_model().conditioner.add_classes(["liver"], torch.randn(1, 24))


def test_classes_not_requested_get_no_gradient(image):
    model = make_model("mlp").train()
    model(image[:1], ["pancreas", "spleen"]).sum().backward()
    grads = [all(p.grad is not None for p in mlp.parameters()) for mlp in model.conditioner.controllers]
    assert grads == [True, False, True, False]
    none = [all(p.grad is None for p in mlp.parameters()) for mlp in model.conditioner.controllers]
    assert none == [False, True, False, True]
    assert model.conditioner.text_proj.weight.grad is not None


def test_unknown_prompt_is_refused(image):
    with pytest.raises(PromptError):
        make_model()(image[:1], ["brain"])


def test_onehot_is_universal_minus_the_text_projection(image):
    torch.manual_seed(0)
    uni = UniversalSegmenter(UNet(preset="small"), UniversalConditioner(NAMES, embeddings=torch.randn(4, 24)))
    hot = UniversalSegmenter(UNet(preset="small"), OneHotConditioner(NAMES))
    assert OneHotConditioner.needs_text is False and UniversalConditioner.needs_text is True
    assert n_params(uni) - n_params(hot) == n_params(uni.conditioner.text_proj) == 24 * 256 + 256
    with torch.no_grad():
        out = hot.eval()(image, ["pancreas", "liver"])
        full = hot(image)
    assert out.shape == (2, 2, *SIZE)
    assert torch.allclose(out, full[:, [2, 1]], atol=1e-5)
    hot.conditioner.add_classes(["stomach"])
    assert hot.class_names[-1] == "stomach" and len(hot.conditioner.controllers) == 5


def test_build_model_from_config_and_state_dict_round_trip(image):
    emb = torch.randn(4, 24)
    cfg = {"backbone": {"name": "unet", "preset": "small"},
           "conditioner": {"name": "universal", "head": "shared", "text_encoder": "minilm"}}
    a = build_model(cfg, NAMES, embeddings=emb).eval()
    b = build_model(cfg, NAMES, embeddings=torch.zeros(4, 24)).eval()
    assert a.conditioner.text_encoder == "minilm"
    b.load_state_dict(a.state_dict())  # embeddings travel in the state dict
    assert torch.equal(b.conditioner.embeddings, emb)
    with torch.no_grad():
        assert torch.allclose(a(image), b(image))


def test_text_norm_rescales_embeddings_and_checkpoints_record_it(tmp_path):
    """"none" (the default, the official code) uses the embeddings as given; "rms" makes a class
    code blind to its embedding's length (unit RMS per dimension). A checkpoint records which and
    loads with it."""
    from promptseg.checkpoint import load_checkpoint, save_checkpoint
    from promptseg.models.official import OFFICIAL_CONFIG

    torch.manual_seed(0)
    emb = torch.randn(2, 24)
    raw = UniversalConditioner(["a", "b"], embeddings=emb)
    rms = UniversalConditioner(["a", "b"], embeddings=emb, text_norm="rms")
    rms.text_proj.load_state_dict(raw.text_proj.state_dict())
    idx = torch.tensor([0, 1])
    assert raw.text_norm == "none" and rms.config_updates() == {"text_norm": "rms"}
    scaled = UniversalConditioner(["a", "b"], embeddings=emb / emb.norm(dim=-1, keepdim=True), text_norm="rms")
    scaled.text_proj.load_state_dict(rms.text_proj.state_dict())
    torch.testing.assert_close(scaled.task_codes(idx), rms.task_codes(idx))        # length does not matter
    unit = emb * (24 ** 0.5 / emb.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(rms.task_codes(idx), F.relu(rms.text_proj(unit)))
    torch.testing.assert_close(raw.task_codes(idx), F.relu(raw.text_proj(emb)))
    assert not torch.allclose(raw.task_codes(idx), rms.task_codes(idx))
    assert rms.head_parameters() == list(rms.text_proj.parameters())
    assert all(c["conditioner"]["text_norm"] == "none" for c in OFFICIAL_CONFIG.values())
    with pytest.raises(Exception, match="text_norm"):
        UniversalConditioner(["a"], embeddings=emb[:1], text_norm="l2")

    torch.manual_seed(1)
    model = UniversalSegmenter(UNet(preset="small"), UniversalConditioner(NAMES, embeddings=torch.randn(4, 24),
                                                                         text_norm="rms")).eval()
    save_checkpoint(model, tmp_path / "m", {"backbone": {"name": "unet", "preset": "small"},
                                            "conditioner": {"name": "universal"}})     # the YAML did not say
    back = load_checkpoint(tmp_path / "m").eval()
    assert back.conditioner.text_norm == "rms"
    x = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(back(x, ["liver", "spleen"]), model(x, ["liver", "spleen"]))


def test_a_checkpoint_from_before_text_norm_is_read_as_trained():
    """A Universal Model config without `text_norm` predates the option: "none", said explicitly,
    so a resume under another setting is refused (trainer) instead of rebuilding another model."""
    from promptseg.checkpoint import as_trained

    assert as_trained({"conditioner": {"name": "universal"}}, {})["conditioner"]["text_norm"] == "none"
    assert as_trained({"conditioner": {}}, {})["conditioner"]["text_norm"] == "none"  # universal is the default name
    assert as_trained({"conditioner": {"name": "universal", "text_norm": "rms"}}, {})["conditioner"]["text_norm"] == "rms"
    assert "text_norm" not in as_trained({"conditioner": {"name": "onehot"}}, {})["conditioner"]
