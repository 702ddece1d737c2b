"""Images, shared by pretraining and extraction (see docs/architecture.md): the guarded decoder (decode),
discovery of folders and datasets (folders), the DataLoader dataset (datasets) and the uint8 transform
(transforms)."""
