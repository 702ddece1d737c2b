"""The layer choice: validation alone decides, with the probe's own C search; ties go to the deeper layer."""
import pytest
import torch

from sslprobe.config.probe import ProbeProtocol
from sslprobe.errors import SSLProbeError
from sslprobe.probing.features import FeatureSet
from sslprobe.probing.layers import LAYER_MAX_ITER, choose_layer, score_layer
from sslprobe.probing.probe import probe
from sslprobe.results import LayerChoice

K, D = 3, 8
PROTOCOL = ProbeProtocol(knn_k=(), device="cpu")


def _rows(n, *, informative, seed):
    """(n, D) rows whose first K columns carry the class (or, uninformative, pure noise) and labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.randn(n, D, generator=g)
    if informative:
        x[:, :K] += 3.0 * torch.nn.functional.one_hot(y, K)
    return FeatureSet(x, y, tuple("abc"))


def _layers():
    """stage2 reads well on validation but not on test; pre-logits the other way round."""
    return {
        "stage2": {"train": _rows(90, informative=True, seed=0), "val": _rows(45, informative=True, seed=1),
                   "test": _rows(45, informative=False, seed=2)},
        "pre-logits": {"train": _rows(90, informative=True, seed=3), "val": _rows(45, informative=False, seed=4),
                       "test": _rows(45, informative=True, seed=5)},
    }


def test_validation_chooses_even_when_test_favours_another_layer():
    layers = _layers()
    on_test = {name: probe(s["train"], val=s["val"], test=s["test"], protocol=PROTOCOL).test.balanced_accuracy
               for name, s in layers.items()}
    assert on_test["pre-logits"] > on_test["stage2"] + 0.3  # test would pick pre-logits
    choice = choose_layer({name: (s["train"], s["val"]) for name, s in layers.items()}, protocol=PROTOCOL)
    assert choice.layer == "stage2" and choice.metric == "balanced"
    assert choice.candidate("stage2").val > choice.candidate("pre-logits").val + 0.3
    assert LayerChoice.from_json(choice.to_json()) == choice


def test_each_candidate_gets_the_probes_own_c_search():
    s = _layers()["stage2"]
    got = score_layer("stage2", s["train"], s["val"], protocol=PROTOCOL)
    ref = probe(s["train"], val=s["val"], protocol=PROTOCOL)  # no test: the search fit's validation numbers
    assert got.C == ref.C and got.val == pytest.approx(ref.val.balanced_accuracy, abs=1e-12)
    assert got.fits == len(ref.val_curve) and got.dim == D
    top1 = score_layer("stage2", s["train"], s["val"], protocol=PROTOCOL.replace(metric="top1"))
    assert top1.val == pytest.approx(ref.val.top1, abs=1e-12)


def test_candidate_fits_are_capped(monkeypatch):
    from sslprobe.probing import search

    caps, real = [], search.fit

    def spy(*a, max_iter, **kw):
        caps.append(max_iter)
        return real(*a, max_iter=max_iter, **kw)

    monkeypatch.setattr(search, "fit", spy)
    s = _layers()["stage2"]
    score_layer("stage2", s["train"], s["val"], protocol=PROTOCOL)
    assert caps and set(caps) == {LAYER_MAX_ITER} < {PROTOCOL.max_iter, LAYER_MAX_ITER}


def test_a_tie_goes_to_the_deeper_layer():
    s = _layers()["stage2"]
    choice = choose_layer({"stage2": (s["train"], s["val"]), "pre-logits": (s["train"], s["val"])},
                          protocol=PROTOCOL)
    assert choice.candidates[0].val == choice.candidates[1].val and choice.layer == "pre-logits"
    with pytest.raises(SSLProbeError):
        choose_layer({}, protocol=PROTOCOL)
