"""sslprobe.config: every option declared once, checked when the config is built, carried whole, torch-free."""
import dataclasses
import math
import subprocess
import sys

import pytest

from sslprobe.config import rules
from sslprobe.config.extract import ExtractConfig
from sslprobe.config.finetune import FinetuneConfig
from sslprobe.config.pretrain import AugmentConfig, PretrainConfig, PreviewConfig
from sslprobe.config.probe import CompareConfig, ProbeConfig, ProbeProtocol
from sslprobe.config.study import ByolRecipe, StudyConfig
from sslprobe.errors import SSLProbeError


@pytest.mark.parametrize("value", [0, -3, math.nan])
def test_at_least_refuses_small_and_nan(value):
    with pytest.raises(SSLProbeError, match=r"^--epochs must be ≥ 1 \(got "):
        rules.at_least("--epochs", value)


def test_at_least_passes_none_and_the_bound():
    rules.at_least("--max-steps", None)
    rules.at_least("--warmup-epochs", 0, 0)
    rules.at_least("--epochs", 1)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_positive_refuses_zero_negative_nan_inf(value):
    with pytest.raises(SSLProbeError, match="--lr must be a positive number"):
        rules.positive("--lr", value)


def test_numbers_parse_and_name_the_option():
    assert rules.numbers("--fractions", "0.01, 0.1,1", float) == (0.01, 0.1, 1.0)
    assert rules.numbers("--shots", "none", int) == () == rules.numbers("--shots", None, int)
    with pytest.raises(SSLProbeError, match="--shots takes comma-separated integers, got '1,x'"):
        rules.numbers("--shots", "1,x", int)


@pytest.mark.parametrize(("change", "message"), [
    ({"knn_k": (0,)}, "--knn-k must be ≥ 1"), ({"seeds": 0}, "--seeds must be ≥ 1"),
    ({"search": "random"}, "--search must be one of grid, binary"), ({"C": -1.0}, "--C must be a positive number"),
    ({"knn_temperature": 0.0}, r"--knn-t \(the kNN temperature\) must be a positive"),
    ({"metric": "f1"}, "--metric must be one of balanced, top1, macro-f1"),
    ({"Cs": ()}, "C values must be positive"), ({"fractions": (0.0,)}, "label fractions must lie in")])
def test_probe_protocol_checks_every_rule(change, message):
    with pytest.raises(SSLProbeError, match=message):
        ProbeProtocol(**change)


def test_cross_option_rules(tmp_path):
    with pytest.raises(SSLProbeError, match="--weights random needs --model"):
        ExtractConfig(data=str(tmp_path), out=tmp_path / "f")
    with pytest.raises(SSLProbeError, match="--tau-base must be in"):
        PretrainConfig(data=str(tmp_path), out=tmp_path / "r", tau_base=1.0)
    with pytest.raises(SSLProbeError, match="--minutes and --max-steps are both run lengths"):
        PretrainConfig(data=str(tmp_path), out=tmp_path / "r", minutes=1.0, max_steps=3)
    with pytest.raises(SSLProbeError, match="--lr fixes the learning rate and --lrs"):
        FinetuneConfig(train=str(tmp_path), out=tmp_path / "ft", model="resnet18", lr=1e-3, lrs=(1e-3,))
    with pytest.raises(SSLProbeError, match="are both budgets"):
        StudyConfig(data=str(tmp_path), out=tmp_path / "s", epochs=3, minutes=2.0)
    with pytest.raises(SSLProbeError, match="--arms must be one of"):
        StudyConfig(data=str(tmp_path), out=tmp_path / "s", arms=("byol", "simclr"))
    with pytest.raises(SSLProbeError, match="nope' does not exist"):
        PretrainConfig(data=str(tmp_path / "nope"), out=tmp_path / "r")


def test_keywords_build_nested_configs_flat_or_whole(tmp_path):
    c = PretrainConfig.of(str(tmp_path), out=tmp_path / "r", blur=False, augment={"flip_p": 0.1})
    assert c.augment == AugmentConfig(blur=False, flip_p=0.1) and c.data == str(tmp_path)
    assert PretrainConfig.of(c, max_steps=4).max_steps == 4 and PretrainConfig.of(c) is c
    assert ProbeConfig.of(str(tmp_path), C=2.0).protocol.C == 2.0
    with pytest.raises(SSLProbeError, match="unknown pretrain option 'bogus'"):
        PretrainConfig.of(str(tmp_path), out=tmp_path, bogus=1)
    with pytest.raises(SSLProbeError, match="--flip-p is a probability"):
        PretrainConfig.of(str(tmp_path), out=tmp_path, flip_p=2.0)


def _non_default(tmp_path):
    d = str(tmp_path)
    return [
        PretrainConfig(data=d, out=tmp_path / "r", model="test_resnet", image_size=32, small_stem=False, max_steps=9,
                       lr=0.3, resume="auto", compile=True, grayscale=True,
                       augment=AugmentConfig(blur=True, crop_scale=(0.2, 0.9), solarize_p=(0.1, 0.3))),
        PreviewConfig(data=d, out=tmp_path / "v.png", n=3, step=2),
        ExtractConfig(data=d, out=tmp_path / "f", weights="pixels", use_cache=False, dtype="float16", layer="2"),
        ProbeConfig(train=d, test=d, protocol=ProbeProtocol(C=0.5, knn_k=(), fractions=(0.1, 1.0), dtype="float64",
                                                            feature_dtype="float16", standardize=False)),
        CompareConfig(sets=(("a", d), ("b", d)), protocol=ProbeProtocol(shots=(1, 5), metric="top1")),
        FinetuneConfig(train=d, out=tmp_path / "ft", model="test_resnet", lrs=(1e-3, 3e-3), crop_scale=(0.3, 1.0),
                       resume="auto", allow_pickle=True, metric="macro-f1"),
        StudyConfig(data=d, out=tmp_path / "s", arms=("pixels", "byol"), minutes=2.5, fractions=(),
                    byol=ByolRecipe(batch_size=16, lr=0.2), labels=None),
    ]


def test_every_config_round_trips_through_json(tmp_path):
    import json

    for c in _non_default(tmp_path):
        doc = json.loads(json.dumps(c.to_json()))
        assert type(c).from_json(doc) == c, type(c).__name__
        f = [f for f in dataclasses.fields(c) if f.default is not dataclasses.MISSING][-1]
        older = type(c).from_json({k: v for k, v in doc.items() if k != f.name})  # a file from before the option
        assert getattr(older, f.name) == f.default


def test_flags_are_the_command_line_that_builds_the_same_config(tmp_path):
    """A config's flags, parsed by the command line, give the same config: reports' command lines are true."""
    from sslprobe.cli.app import app
    from sslprobe.cli.params import build_config

    commands = {c.callback.__name__: c for c in app.registered_commands}
    for c in _non_default(tmp_path):
        name = type(c).name
        got = {}
        cmd = next(v for k, v in commands.items() if (v.name or k) == name)

        def capture(_got=got, _cls=c.__class__, **values):
            _got["config"] = build_config(_cls, values)

        import typer.main

        click_cmd = typer.main.get_command_from_info(cmd, pretty_exceptions_short=True, rich_markup_mode=None)
        click_cmd.callback = capture
        arguments = [f"{n}={p}" for n, p in c.sets] if isinstance(c, CompareConfig) else \
            [getattr(c, "data", None) or c.train]
        click_cmd.main(args=[*arguments, *c.flags()], standalone_mode=False)
        assert got["config"] == c, name


def _parsed(cls, args):
    """The config the command line of ``cls``'s command builds from ``args`` (nothing runs)."""
    import typer.main

    from sslprobe.cli.app import app
    from sslprobe.cli.params import build_config

    cmd = next(v for k, v in {c.callback.__name__: c for c in app.registered_commands}.items()
               if (v.name or k) == cls.name)
    got = {}
    click_cmd = typer.main.get_command_from_info(cmd, pretty_exceptions_short=True, rich_markup_mode=None)
    click_cmd.callback = lambda **values: got.setdefault("config", build_config(cls, values))
    click_cmd.main(args=[str(a) for a in args], standalone_mode=False)
    return got["config"]


def test_metric_is_one_option_of_probe_compare_finetune_and_study(tmp_path):
    """--metric (default balanced) on the four commands that choose by a metric; --select is gone."""
    from sslprobe.config.common import METRIC_KEYS, METRICS
    from sslprobe.probing.uncertainty import METRIC_KEYS as KEYS
    from sslprobe.probing.uncertainty import METRICS as CHOICES

    assert (CHOICES, KEYS) == (METRICS, METRIC_KEYS) == (("balanced", "top1", "macro-f1"),
                                                         {"balanced": "balanced_accuracy", "top1": "top1",
                                                          "macro-f1": "macro_f1"})
    d = str(tmp_path)
    commands = ((ProbeConfig, [d], lambda c: c.protocol.metric),
                (CompareConfig, [f"a={d}"], lambda c: c.protocol.metric),
                (FinetuneConfig, [d, "--out", tmp_path / "ft", "--model", "resnet18"], lambda c: c.metric),
                (StudyConfig, [d, "--out", tmp_path / "s"], lambda c: c.metric))
    for cls, args, metric in commands:
        assert metric(_parsed(cls, args)) == "balanced", cls.name
        for m in METRICS:
            assert metric(_parsed(cls, [*args, "--metric", m])) == m, (cls.name, m)
        with pytest.raises(SSLProbeError, match="--metric must be one of balanced, top1, macro-f1"):
            _parsed(cls, [*args, "--metric", "f1"])
        with pytest.raises(Exception, match="--select"):
            _parsed(cls, [*args, "--select", "top1"])


def test_importing_configs_loads_no_torch():
    code = "import sys, sslprobe.config.study, sslprobe.config.finetune; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False"
