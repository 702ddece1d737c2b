"""Run the command line in-process as a user would: exit code, stdout, stderr."""
import sys

import pytest

from sslprobe.cli import main


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["sslprobe", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return e.value.code, out, err
