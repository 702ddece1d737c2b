"""The command line: the three commands end to end, one-line errors with exit code 2, light --help."""
import json
import subprocess
import sys

from tests.clirun import run


def test_pretrain_extract_probe_end_to_end(monkeypatch, capsys, class_folder, tmp_path):
    run_dir, feats = tmp_path / "run", tmp_path / "feats"
    code, _, err = run(monkeypatch, capsys, "pretrain", class_folder, "--out", run_dir, "--model", "test_resnet",
                       "--image-size", "16", "--batch-size", "8", "--max-steps", "3", "--proj-hidden", "32",
                       "--workers", "0")
    assert code == 0, err
    assert (run_dir / "backbone.safetensors").exists() and (run_dir / "metrics.jsonl").read_text()
    code, _, err = run(monkeypatch, capsys, "extract", class_folder, "--out", feats,
                       "--weights", run_dir / "backbone.safetensors", "--workers", "0")
    assert code == 0, err
    assert "24 images embedded" in err
    code, out, err = run(monkeypatch, capsys, "probe", feats, "--test", feats, "--json")
    assert code == 0, err
    result = json.loads(out)
    for split in ("test", "val"):
        assert set(result[split]) >= {"top1", "top5", "balanced_accuracy"}
        assert 0 <= result[split]["top1"] <= 1
    assert result["C"] > 0
    code, out, _ = run(monkeypatch, capsys, "probe", feats, "--test", feats)
    assert code == 0 and "top-1" in out.lower()


def test_version(monkeypatch, capsys):
    from sslprobe import __version__

    code, out, _ = run(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"sslprobe {__version__}"


def test_help_and_arg_errors_import_no_torch():
    probe = ("import sys; sys.argv = ['sslprobe', {args}]; from sslprobe.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'timm', 'datasets', 'matplotlib') if m in sys.modules))")
    for args in ("'--help'", "'pretrain', '--help'", "'extract', 'missing-folder', '--out', 'x'"):
        r = subprocess.run([sys.executable, "-c", probe.format(args=args)], check=False, capture_output=True,
                           text=True, timeout=60)
        assert r.stdout.strip().splitlines()[-1] == "[]", (args, r.stdout, r.stderr)


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "sslprobe", "--version"], check=False, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("sslprobe ")


def test_extract_small_stem_flags(monkeypatch, capsys, class_folder, tmp_path):
    base = ("extract", class_folder, "--weights", "random", "--model", "test_resnet", "--workers", "0", "--no-cache")
    for flag, size, want in (("--small-stem", "96", True), ("--no-small-stem", "32", False)):
        code, _, err = run(monkeypatch, capsys, *base, "--image-size", size, flag, "--out", tmp_path / flag)
        assert code == 0, err
        assert json.loads((tmp_path / flag / "manifest.json").read_text())["preprocessing"]["small_stem"] is want


def test_extract_stem_that_does_not_fit_the_weights_exits_2(monkeypatch, capsys, class_folder, tmp_path):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(path))
    code, _, err = run(monkeypatch, capsys, "extract", class_folder, "--weights", path, "--model", "resnet18",
                       "--image-size", "32", "--small-stem", "--out", tmp_path / "f", "--workers", "0")
    assert code == 2 and err.strip().count("\n") == 0
    assert "was trained with the standard 7×7 stem; drop --small-stem" in err
    assert not (tmp_path / "f").exists()


def test_pretrain_records_the_stem_and_resume_must_match(monkeypatch, capsys, class_folder, tmp_path):
    args = ("pretrain", class_folder, "--out", tmp_path / "run", "--model", "test_resnet", "--image-size", "16",
            "--batch-size", "8", "--max-steps", "4", "--stop-at", "2", "--proj-hidden", "32", "--workers", "0")
    code, _, err = run(monkeypatch, capsys, *args, "--no-small-stem")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["small_stem"] is False
    code, _, err = run(monkeypatch, capsys, *args, "--resume")  # the default would pick the small stem at 16 px
    assert code == 2 and "small_stem: False → True" in err


def test_pair_options_show_the_form_that_parses(monkeypatch, capsys, class_folder, tmp_path):
    """--crop-scale takes two numbers; its help said <float,float> and "0.2,1.0" failed (issue 24)."""
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(monkeypatch, capsys, "pretrain", "--help")
    assert code == 0
    for flag, metavar in (("--crop-scale", "MIN MAX"), ("--blur-sigma", "MIN MAX"), ("--blur-p", "P1 P2"),
                          ("--solarize-p", "P1 P2")):
        line = next(x for x in out.splitlines() if flag in x)
        assert metavar in line and "<float,float>" not in line, line
    from sslprobe.cli.params import build_config
    from sslprobe.config.pretrain import PretrainConfig

    config = build_config(PretrainConfig, {"data": class_folder, "out": tmp_path / "run", "crop_scale": (0.2, 1.0)})
    assert config.augment.crop_scale == (0.2, 1.0)
