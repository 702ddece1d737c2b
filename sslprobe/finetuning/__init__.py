"""Fine-tuning (docs/finetune.md): the recipe (recipe), the data and its splits (data), the training views
(augment), the start network (network), one training run (loop), the timed step behind --minutes (timing), model
selection (selection),
the label curve (curve), the exported network and prediction with it (export), the report (report) and the
``finetune`` function (finetune)."""
