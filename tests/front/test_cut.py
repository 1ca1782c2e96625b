"""Where a model is cut after its frozen front: the two halves give the model's own output, for every kind of model
supported; anything else is refused with the reason and what is supported."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import tiny_bert_classifier, tiny_gpt2_classifier
from torch import nn

from lightning_rwc.front import SUPPORTED, CutError, cut

transformers = pytest.importorskip("transformers")


IMAGES = torch.randn(3, 3, 32, 32)
TOKENS = torch.randint(1, 100, (3, 12))
CASES = {
    "sequential": (
        lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)),
        "net.1",
        torch.randn(3, 5),
    ),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), "net.layer2", IMAGES),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), "net.features.11", IMAGES),
    "gpt2": (tiny_gpt2_classifier, "net.transformer.h.1", TOKENS),
    "bert": (tiny_bert_classifier, "net.bert.encoder.layer.2", TOKENS),
}


class Holder(nn.Module):
    """The model as a LightningModule holds it: an attribute, called by its owner."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(input_ids=x) if x.dtype == torch.long else self.net(x)
        return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("kind", sorted(CASES))
def test_the_rest_of_the_front_output_is_the_models_output(kind):
    build, path, x = CASES[kind]
    torch.manual_seed(0)
    model = Holder(build()).eval()
    halves = cut(model, path)
    with torch.no_grad():
        expected = model(x)
        root = halves.root
        front = halves.front(input_ids=x) if x.dtype == torch.long and kind == "gpt2" else None
        calls = []

        def replaced(*args, **kwargs):  # the cut module's forward, in two halves
            output = halves.front(*args, **kwargs)
            calls.append(output.shape)
            return halves.rest(output, *args, **kwargs)

        root.forward = replaced
        try:
            got = model(x)
        finally:
            del root.forward
    assert calls and calls[0][0] == x.shape[0]  # the front's output has the batch first
    assert torch.equal(got, expected)
    assert front is None or front.shape == (3, 12, 32)
    assert halves.modules and all(m is not root for m in halves.modules)


def test_what_cannot_be_cut_says_why_and_what_can():
    class Skips(nn.Module):  # the rest uses two values of the front: not a single cut
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            return self.c(self.b(h) + h)

    class Branches(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x)) if x.sum() > 0 else x

    with pytest.raises(CutError, match="uses 2 values of the front after 'b', not one"):
        cut(Skips(), "b")
    with pytest.raises(CutError, match="torch.fx cannot trace Branches"):
        cut(Branches(), "a")
    with pytest.raises(CutError, match="'nothing' is not a module of the model"):
        cut(Skips(), "nothing")
    assert "nn.Sequential" in SUPPORTED and "ResNet" in SUPPORTED and "GPT-2" in SUPPORTED
