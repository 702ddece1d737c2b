"""A labelled folder as fine-tuning data: classes checked, images decoded once, train / validation / test rows.

Every readable image is decoded once by DataLoader workers into two uint8 forms: the whole image
squashed to the training square with its aspect ratio (``images.transforms.WholeImage``; the random
crops are drawn from it on the device, ``augment.py``) and timm's evaluation centre crop (what
``extract`` embeds), with one channel for a grey backbone. They stay in
memory, on the GPU when there is one, below ``RAM_BYTES``; above it the workers decode the rows
again at every use. The validation hold-out is the probe's: ``probing.holdout.stratified_split`` of
the readable labelled rows in folder order with the same fraction and seed, so a fine-tune and a
probe of the same folder hold out the same images (docs/finetune.md).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from sslprobe.backbone import BackboneSpec, eval_transform
from sslprobe.errors import SSLProbeError
from sslprobe.images.decode import BadImageError, decode_image
from sslprobe.images.folders import ImageSet, open_images, skipped_report
from sslprobe.images.transforms import Uint8Transform, WholeImage
from sslprobe.probing.holdout import stratified_split
from sslprobe.runtime.progress import progress_bar

RAM_BYTES = 4 << 30  # decoded rows above this are decoded again at every use instead of kept


def open_train(data: str | os.PathLike, *, image_column: str | None, label_column: str | None) -> ImageSet:
    """TRAIN: labelled images of at least two classes, or a one-line error saying how to label them."""
    images = open_images(data, image_column=image_column, label_column=label_column)
    present = {y for y in images.labels if y >= 0}
    if not present:
        raise SSLProbeError(f"'{data}' has no labels; fine-tuning needs one subfolder per class "
                            "(TRAIN/cat/…, TRAIN/dog/…) or a dataset with a label column")
    if len(present) < 2:
        raise SSLProbeError(f"'{data}' has only the class '{images.classes[present.pop()]}'; fine-tuning needs at "
                            "least 2 classes: add a subfolder of images for each other class")
    return images


def open_eval(data: str | os.PathLike, *, name: str, classes: tuple[str, ...], image_column: str | None,
              label_column: str | None) -> tuple[ImageSet, torch.Tensor]:
    """VAL or TEST and the lookup of its class indices into TRAIN's; unlabelled or unknown classes are errors."""
    images = open_images(data, image_column=image_column, label_column=label_column)
    used = sorted({images.classes[y] for y in images.labels if y >= 0})
    if not used:
        raise SSLProbeError(f"--{name} '{data}' has no labels; give it one subfolder per class, named as in TRAIN")
    unknown = [c for c in used if c not in classes]
    if unknown:
        raise SSLProbeError(f"--{name} '{data}' has classes TRAIN lacks ({', '.join(unknown[:5])}); the network "
                            f"cannot predict them: add them to TRAIN or remove them from --{name}")
    lut = torch.tensor([classes.index(c) if c in classes else -1 for c in images.classes] + [-1])
    return images, lut


class _Decoded(torch.utils.data.Dataset):
    """Item ``i`` of an ImageSet as (i, train square | None, aspect, eval crop | None, reason | None)."""

    def __init__(self, images: ImageSet, *, squash: WholeImage | None, crop: Uint8Transform | None, draft: int) -> None:
        self.images, self.squash, self.crop = images, squash, crop
        self.draft = (draft, draft)  # JPEGs decode at no less than both forms need

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple:
        try:
            img = self.images.read(i) if self.images.kind == "hf" else \
                decode_image(self.images.read_bytes(i), draft=self.draft)
            sq = self.squash(img) if self.squash is not None else None
            return i, sq, img.width / img.height, self.crop(img) if self.crop is not None else None, None
        except BadImageError as e:
            return i, None, 1.0, None, str(e)


def _stack(items: list[tuple], k: int) -> torch.Tensor | None:
    return torch.stack([it[k] for it in items]) if items and items[0][k] is not None else None


def _collate(items: list[tuple]) -> dict:
    """DataLoader ``collate_fn`` for ``_Decoded`` items: the readable ones stacked, the others as (index, reason)."""
    good = [it for it in items if it[4] is None]
    return {"idx": torch.tensor([it[0] for it in good], dtype=torch.long), "square": _stack(good, 1),
            "aspect": torch.tensor([it[2] for it in good], dtype=torch.float32), "crop": _stack(good, 3),
            "skipped": [(int(it[0]), str(it[4])) for it in items if it[4] is not None]}


@dataclass
class ImageRows:
    """The readable labelled images of one source by position 0…n−1: labels, aspects and, when kept, pixels.

    ``square`` (n, 3, S, S) and ``crop`` (n, 3, S, S) uint8 are None when the rows are not kept in memory
    (or a form was not asked for); the batches are then decoded again by the workers.
    """

    images: ImageSet
    idx: torch.Tensor  # (n,) ImageSet indices
    labels: torch.Tensor  # (n,) in [0, K)
    aspect: torch.Tensor  # (n,) width / height
    square: torch.Tensor | None
    crop: torch.Tensor | None
    squash: WholeImage | None
    eval_crop: Uint8Transform
    workers: int
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.idx.numel())

    def train_batches(self, order: torch.Tensor, *, batch: int, start: int,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        """(uint8 squares, aspects, labels) on ``device`` of ``order[k·batch:(k+1)·batch]`` for k ≥ ``start``
        (whole batches only).

        Kept rows are sliced on their device from one copy of ``order``: a host→GPU copy per step
        would make the host wait for the GPU's queue every step.
        """
        steps = range(start, int(order.numel()) // batch)
        if self.square is not None:
            on = self.square.device
            order, labels, aspect = order.to(on), self.labels.to(on), self.aspect.to(on)
            for k in steps:
                pos = order[k * batch:(k + 1) * batch]
                yield self.square[pos], aspect[pos], labels[pos]
            return
        chunks = [order[k * batch:(k + 1) * batch] for k in steps]
        for b, pos in self._stream(chunks, squash=self.squash, crop=None, pin=device.type == "cuda"):
            yield (b["square"].to(device, non_blocking=True), b["aspect"].to(device, non_blocking=True),
                   self.labels[pos].to(device, non_blocking=True))

    def eval_batches(self, positions: torch.Tensor, *, batch: int,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 eval crops, positions) on ``device`` for ``positions``, in order, ``batch`` at a time."""
        if self.crop is not None:
            for pos, pos_d in zip(positions.split(batch), positions.to(self.crop.device).split(batch)):
                yield self.crop[pos_d], pos
            return
        chunks = list(positions.split(batch))
        for b, pos in self._stream(chunks, squash=None, crop=self.eval_crop, pin=device.type == "cuda"):
            yield b["crop"].to(device, non_blocking=True), pos

    def _stream(self, chunks: list[torch.Tensor], *, squash: WholeImage | None, crop: Uint8Transform | None,
                pin: bool) -> Iterator[tuple[dict, torch.Tensor]]:
        """Decode the chunks again (a file that has become unreadable since the first pass stops the run)."""
        from torch.utils.data import DataLoader

        where = {int(j): p for p, j in enumerate(self.idx.tolist())}
        sampler = [self.idx[pos].tolist() for pos in chunks]
        ds = _Decoded(self.images, squash=squash, crop=crop, draft=max(self.eval_crop.resize, self.eval_crop.size))
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=self.workers, collate_fn=_collate, pin_memory=pin)
        for b in loader:
            if b["skipped"]:
                i, reason = b["skipped"][0]
                raise SSLProbeError(f"'{self.images.ids[i]}' became unreadable during the run ({reason}); restore it "
                                    "and continue with --resume")
            yield b, torch.tensor([where[int(j)] for j in b["idx"]], dtype=torch.long)


def _first_pass(ds: _Decoded, rows: list[int], *, workers: int, show_progress: bool,
                what: str) -> tuple[list[dict], list[tuple[int, str]]]:
    """The decoded batches of ``rows`` and the (index, reason) of the unreadable ones."""
    from torch.utils.data import DataLoader, Subset

    parts: list[dict] = []
    skipped: list[tuple[int, str]] = []
    # The main process only collects here: its core decodes too (one worker more, as the cores allow).
    workers = min(workers + 1, os.cpu_count() or 1) if workers > 0 else 0
    loader = DataLoader(Subset(ds, rows), batch_size=64, num_workers=workers, collate_fn=_collate)
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"decode {what}", total=len(rows))
        for b in loader:
            parts.append(b)
            skipped.extend(b["skipped"])
            bar.advance(task, len(b["idx"]) + len(b["skipped"]))
    return parts, skipped


def _cat(parts: list[dict], key: str, device: torch.device) -> torch.Tensor | None:
    kept = [b[key] for b in parts if b[key] is not None]
    return torch.cat(kept).to(device) if kept else None


def decode_rows(images: ImageSet, lut: torch.Tensor | None, *, spec: BackboneSpec, squares: bool, workers: int,
                device: torch.device, show_progress: bool, what: str, ram_bytes: int | None = None) -> ImageRows:
    """Decode every labelled image once: readable rows (in ImageSet order) with their labels, the unreadable listed.

    ``lut`` maps the source's class indices to TRAIN's (None: the source is TRAIN). ``squares``: also
    make the training form. Pixels stay in memory (on ``device``) when the forms fit in ``ram_bytes``.
    """
    labels = torch.tensor(images.labels, dtype=torch.long)
    labelled = (labels >= 0).nonzero().squeeze(1)
    side = spec.image_size
    keep = len(labelled) * 3 * side * side * (2 if squares else 1) <= (RAM_BYTES if ram_bytes is None else ram_bytes)
    squash = WholeImage(side, channels=spec.in_chans) if squares else None  # pretraining's whole-image store
    crop = Uint8Transform.from_timm(eval_transform(spec), channels=spec.in_chans)
    ds = _Decoded(images, squash=squash if keep else None, crop=crop if keep else None,
                  draft=max(side, crop.resize))
    parts, skipped = _first_pass(ds, labelled.tolist(), workers=workers, show_progress=show_progress, what=what)
    idx = torch.cat([b["idx"] for b in parts]) if parts else torch.zeros(0, dtype=torch.long)
    if idx.numel() == 0:
        raise SSLProbeError(f"no readable labelled image in '{images.source}' ({len(skipped)} skipped); "
                            "check the files (the skipped list is in report.json)")
    y = labels[idx] if lut is None else lut[labels[idx]]
    return ImageRows(images, idx, y, torch.cat([b["aspect"] for b in parts]), _cat(parts, "square", device),
                     _cat(parts, "crop", device), squash, crop, workers, skipped_report(images, skipped))


class JoinedRows:
    """Several sources' rows as one pool, positions running through the parts in order: the refit trains on the
    training rows and a given ``--val``'s together (``selection.refit``). Only training batches are drawn from it."""

    def __init__(self, *parts: ImageRows) -> None:
        self.parts = parts
        self.labels = torch.cat([p.labels for p in parts])
        self.aspect = torch.cat([p.aspect for p in parts])
        self.starts = [0, *torch.cumsum(torch.tensor([len(p) for p in parts]), 0).tolist()]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def train_batches(self, order: torch.Tensor, *, batch: int, start: int,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
        """:meth:`ImageRows.train_batches` over the pool: each part gives its rows of every batch, put back in
        ``order``'s order."""
        chunks = [order[k * batch:(k + 1) * batch] for k in range(start, int(order.numel()) // batch)]
        masks = [[(c >= lo) & (c < hi) for c in chunks] for lo, hi in zip(self.starts, self.starts[1:])]
        streams = [_part_batches(p, [c[m] - lo for c, m in zip(chunks, ms)], device)
                   for p, ms, lo in zip(self.parts, masks, self.starts)]
        for k, c in enumerate(chunks):
            got = [next(s) for s in streams]
            x, _, _ = next(g for g in got if g is not None)
            xs = x.new_empty((c.numel(), *x.shape[1:]))
            aspect, labels = self.aspect[c].to(device), self.labels[c].to(device)
            for ms, g in zip(masks, got):
                if g is not None:
                    xs[ms[k].to(device)] = g[0]
            yield xs, aspect, labels

    def eval_batches(self, positions: torch.Tensor, *, batch: int,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`ImageRows.eval_batches` over the pool, part after part (the order of ``positions`` within each)."""
        for p, lo, hi in zip(self.parts, self.starts, self.starts[1:]):
            mine = positions[(positions >= lo) & (positions < hi)]
            for x, pos in p.eval_batches(mine - lo, batch=batch, device=device):
                yield x, pos + lo


def _part_batches(rows: ImageRows, chunks: list[torch.Tensor],
                  device: torch.device) -> Iterator[tuple[torch.Tensor, ...] | None]:
    """(squares, aspects, labels) on ``device`` for each chunk of positions of ``rows``; None for an empty chunk."""
    full = [c for c in chunks if c.numel()]
    if rows.square is not None:
        decoded = ((rows.square[c.to(rows.square.device)].to(device), c) for c in full)
    else:
        decoded = ((b["square"].to(device, non_blocking=True), pos)
                   for b, pos in rows._stream(full, squash=rows.squash, crop=None, pin=device.type == "cuda"))
    for c in chunks:
        if c.numel() == 0:
            yield None
            continue
        x, pos = next(decoded)
        yield x, rows.aspect[pos].to(device), rows.labels[pos].to(device)


@dataclass(frozen=True)
class Held:
    """Which rows train and which choose the epoch: positions into ``train`` and into ``val`` (``train`` itself
    for a hold-out)."""

    fit: torch.Tensor
    val: torch.Tensor
    given: bool  # a separate --val set


def hold_out(train: ImageRows, *, fraction: float, seed: int) -> Held:
    """The probe's stratified, seeded hold-out of the training rows (``probing.holdout.stratified_split``)."""
    fit, val = stratified_split(train.labels, fraction=fraction, seed=seed)
    if val.numel() == 0:
        raise SSLProbeError("TRAIN is too small for a validation hold-out (one image per class); add images or "
                            "pass --val")
    return Held(fit, val, False)


def check_classes(train: ImageRows, classes: tuple[str, ...]) -> None:
    """At least two classes must have readable images (the rest may have been skipped)."""
    present = train.labels.unique()
    if present.numel() < 2:
        raise SSLProbeError(f"only the class '{classes[int(present[0])]}' has readable images in TRAIN; fine-tuning "
                            "needs at least 2 (see the skipped files in report.json)")


__all__ = ["RAM_BYTES", "Held", "ImageRows", "JoinedRows", "check_classes", "decode_rows", "hold_out", "open_eval",
           "open_train"]
