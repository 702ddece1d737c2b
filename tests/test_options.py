"""sslprobe.options: the option rules, each with one message, and no torch at import."""
import math
import subprocess
import sys

import pytest

from sslprobe import options as opt
from sslprobe.errors import SSLProbeError


@pytest.mark.parametrize("value", [0, -3, math.nan])
def test_at_least_refuses_small_and_nan(value):
    with pytest.raises(SSLProbeError, match=r"^--epochs must be ≥ 1 \(got "):
        opt.at_least("--epochs", value)


def test_at_least_passes_none_and_the_bound():
    opt.at_least("--max-steps", None)
    opt.at_least("--warmup-epochs", 0, 0)
    opt.at_least("--epochs", 1)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_positive_refuses_zero_negative_nan_inf(value):
    with pytest.raises(SSLProbeError, match="--lr must be a positive number"):
        opt.positive("--lr", value)


def test_numbers_parse_and_name_the_option():
    assert opt.numbers("--fractions", "0.01, 0.1,1", float) == (0.01, 0.1, 1.0)
    assert opt.numbers("--shots", "none", int) == () == opt.numbers("--shots", None, int)
    with pytest.raises(SSLProbeError, match="--shots takes comma-separated integers, got '1,x'"):
        opt.numbers("--shots", "1,x", int)


def test_probe_keywords_checks_every_rule():
    kw = opt.probe_keywords(C=None, search="grid", knn_k="10,20", knn_t=0.07, fractions="0.1", shots=None, seeds=3,
                            chunk_rows=None, float64=True, half_features=False, select="auto")
    assert kw["knn_k"] == (10, 20) and kw["fractions"] == (0.1,) and kw["dtype"] == "float64"
    base = dict(C=None, search="grid", knn_k="10", knn_t=0.07, fractions=None, shots=None, seeds=3, chunk_rows=None,
                float64=False, half_features=False, select="auto")
    for change, message in (({"knn_k": "0"}, "--knn-k must be ≥ 1"), ({"seeds": 0}, "--seeds must be ≥ 1"),
                            ({"search": "random"}, "--search must be one of grid, binary"),
                            ({"C": -1.0}, "--C must be a positive number"), ({"knn_t": 0.0}, "temperature"),
                            ({"select": "f1"}, "--select must be one of auto, top1, balanced")):
        with pytest.raises(SSLProbeError, match=message):
            opt.probe_keywords(**{**base, **change})


def test_check_extract_and_pretrain_rules():
    with pytest.raises(SSLProbeError, match="--weights random needs --model"):
        opt.check_extract(weights="random", model=None, batch_size=1, image_size=None, pool="auto",
                          dtype="float32", decode="cpu")
    with pytest.raises(SSLProbeError, match="--tau-base must be in"):
        opt.check_pretrain(batch_size=8, epochs=1, max_steps=None, image_size=None, stop_at=None, eval_every=1,
                           log_every=1, lr=None, max_minutes=None, optimizer="auto", tau_base=1.0,
                           warmup_epochs=0, proj_hidden=8, proj_dim=8, weight_decay=0)


def test_importing_options_loads_no_torch():
    code = "import sys, sslprobe.options; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False"
