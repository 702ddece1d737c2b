"""The command line: the three commands end to end, one-line errors with exit code 2, light --help."""
import json
import subprocess
import sys

import pytest

from sslprobe.cli import main


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["sslprobe", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


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


@pytest.mark.parametrize(
    "args, needle",
    [
        (["pretrain", "{missing}", "--out", "{tmp}/r"], "does not exist"),
        (["pretrain", "{empty}", "--out", "{tmp}/r"], "no images found"),
        (["pretrain", "{data}", "--out", "{tmp}/r", "--model", "no_such_model", "--workers", "0"], "unknown model"),
        (["pretrain", "{data}", "--out", "{tmp}/r", "--batch-size", "0"], "--batch-size"),
        (["pretrain", "{data}", "--out", "{tmp}/r", "--image-size", "-1"], "--image-size"),
        (["pretrain", "{data}"], "--out"),
        (["pretrain", "{data}", "--out", "{tmp}/r", "--epochs", "many"], "--epochs"),
        (["extract", "{data}", "--out", "{tmp}/f", "--weights", "{notst}"], "safetensors"),
        (["extract", "{data}", "--out", "{tmp}/f", "--weights", "random"], "--model"),
        (["extract", "{data}", "--out", "{tmp}/f", "--weights", "{tmp}/nope.safetensors"], "not found"),
        (["probe", "{tmp}/nothing"], "does not exist"),
        (["probe", "{onefeat}"], "class"),
        (["probe", "{feat}", "--test", "{widefeat}"], "width"),
        (["probe", "{feat}", "--C", "0"], "--C"),
        (["frobnicate"], "No such command"),
    ],
)
def test_misuse_exits_2_with_one_line(monkeypatch, capsys, tmp_path, class_folder, args, needle):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "empty").mkdir()
    (tmp_path / "w.safetensors").write_text("not really")
    save_file({"features": torch.randn(6, 4), "labels": torch.zeros(6, dtype=torch.long)}, str(tmp_path / "one.safetensors"))
    save_file({"features": torch.randn(6, 4), "labels": torch.tensor([0, 1] * 3)}, str(tmp_path / "feat.safetensors"))
    save_file({"features": torch.randn(6, 5), "labels": torch.tensor([0, 1] * 3)}, str(tmp_path / "wide.safetensors"))
    subs = {"{missing}": str(tmp_path / "missing"), "{empty}": str(tmp_path / "empty"), "{data}": str(class_folder),
            "{tmp}": str(tmp_path), "{notst}": str(tmp_path / "w.safetensors"), "{onefeat}": str(tmp_path / "one.safetensors"),
            "{feat}": str(tmp_path / "feat.safetensors"), "{widefeat}": str(tmp_path / "wide.safetensors")}
    filled = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        filled.append(a)
    code, out, err = run(monkeypatch, capsys, *filled)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle.lower() in lines[0].lower()
    assert "Traceback" not in err


def test_version(monkeypatch, capsys):
    from sslprobe import __version__

    code, out, _ = run(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"sslprobe {__version__}"


def test_help_and_arg_errors_import_no_torch():
    probe = ("import sys; sys.argv = ['sslprobe', {args}]; from sslprobe.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'timm', 'datasets', 'matplotlib') if m in sys.modules))")
    for args in ("'--help'", "'pretrain', '--help'", "'extract', 'missing-folder', '--out', 'x'"):
        r = subprocess.run([sys.executable, "-c", probe.format(args=args)], capture_output=True, text=True, timeout=60)
        assert r.stdout.strip().splitlines()[-1] == "[]", (args, r.stdout, r.stderr)


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "sslprobe", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("sslprobe ")
