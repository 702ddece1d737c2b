"""`sslprobe study` (docs/study.md): the whole question — does BYOL on my images help? — in one command.

plan (arms, the BYOL recipe and budget, what this install can run) → sources (images by content
hash) → assignment (splits.json and the leakage guard) → layout (the folders the commands read) →
stages (each arm: pretrain → extract → probe, or finetune; resume.py keys them, the shared
``sslprobe/timebudget.py`` fits --minutes, slices.py cuts one extraction by split) → report (numbers,
document, render: report.html, report.md, results.csv, study.json; progress.py is the one display).
records.py holds what ran (Done, ArmRun, Prepared, StudyRecord) as plain dataclasses that run, stages, report
and document share. ``run.study`` is the entry.
"""
