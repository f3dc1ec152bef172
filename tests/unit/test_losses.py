import torch

from promptseg.train.losses import masked_bce_dice, with_deep_supervision


def test_unannotated_class_gets_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    targets = (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    annotated = torch.tensor([[True, False, True], [False, True, False]])
    # whatever the image contains: poison the excluded entries with inf/NaN targets
    targets[0, 1] = float("nan")
    targets[1, 0] = float("inf")
    loss, parts = masked_bce_dice(logits, targets, annotated)
    loss.backward()
    assert torch.isfinite(loss)
    assert parts["pairs"] == 3
    g = logits.grad
    assert torch.count_nonzero(g[0, 1]) == 0 and torch.count_nonzero(g[1, 0]) == 0
    assert torch.count_nonzero(g[1, 2]) == 0
    assert torch.count_nonzero(g[0, 0]) > 0 and torch.count_nonzero(g[1, 1]) > 0


def test_loss_values_known_answer():
    logits = torch.full((1, 1, 4, 4, 4), 20.0)
    targets = torch.ones(1, 1, 4, 4, 4)
    loss, parts = masked_bce_dice(logits, targets, torch.tensor([[True]]))
    assert parts["dice"] < 1e-6 and parts["bce"] < 1e-6 and float(loss) < 1e-6
    loss, parts = masked_bce_dice(-logits, targets, torch.tensor([[True]]))
    assert parts["dice"] > 0.99 and parts["bce"] > 19


def test_no_annotated_pair_gives_zero_loss_with_graph():
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    loss, _ = masked_bce_dice(logits, torch.zeros_like(logits), torch.zeros(1, 2, dtype=torch.bool))
    loss.backward()
    assert float(loss) == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_dice_weight_scales_only_the_dice_term_at_every_output():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8, 8)
    targets = (torch.rand(2, 2, 8, 8, 8) > 0.7).float()
    annotated = torch.tensor([[True, True], [True, False]])
    full, parts = masked_bce_dice(logits, targets, annotated)
    light, same = masked_bce_dice(logits, targets, annotated, dice_weight=0.25)
    assert same == parts
    assert torch.isclose(light, torch.tensor(parts["bce"] + 0.25 * parts["dice"]))
    assert torch.isclose(full, torch.tensor(parts["bce"] + parts["dice"]))
    coarse = torch.randn(2, 2, 4, 4, 4)
    small = torch.nn.functional.interpolate(targets, size=(4, 4, 4), mode="nearest")
    _, cp = masked_bce_dice(coarse, small, annotated)
    ds = with_deep_supervision(light, [(0.5, coarse)], targets, annotated, dice_weight=0.25)
    assert torch.isclose(ds, (light + 0.5 * (cp["bce"] + 0.25 * cp["dice"])) / 1.5)
