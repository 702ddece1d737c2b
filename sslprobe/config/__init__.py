"""One frozen, typed config per command (docs/architecture.md, "Options"); torch-free.

Each module is one command's config (``sslprobe.config.pretrain.PretrainConfig``, ``…study.StudyConfig``);
every option is a field with its default, help and rule, checked when the config is built, and the
command line is generated from the fields. Importers name the module; nothing is re-exported here.
"""
