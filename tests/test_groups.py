"""--groups: no group on two sides of the split (over random groupings), the ways to name groups, the reuse rule."""
import json
import random

import pytest

from sslprobe.errors import SSLProbeError
from sslprobe.study import groups
from sslprobe.study.assignment import SplitRule, assign, guard
from sslprobe.study.sources import Entry, HashCache, Inputs, hash_entries, open_sources
from tests.conftest import write_class_folder


def _random_inputs(rng: random.Random) -> Inputs:
    """A random grouping: 2–4 classes, 3–25 groups of uneven size, a group's images in any class, a few bytes
    shared by two groups (which joins them), a few unlabeled images in groups of their own."""
    classes = [f"c{k}" for k in range(rng.randint(2, 4))]
    n_groups = rng.randint(3, 25)
    entries, keys = [], []
    for i in range(rng.randint(20, 120)):
        key = rng.choice(keys) if keys and rng.random() < 0.05 else f"{i:064x}"
        keys.append(key)
        g = f"g{min(int(rng.expovariate(1.0) * n_groups / 3), n_groups - 1)}"
        entries.append(Entry("data", i, f"x/{i}.png", key, rng.choice(classes), None, g))
    for i in range(rng.randint(0, 10)):
        entries.append(Entry("unlabeled", i, f"u{i}.png", f"{10_000 + i:064x}", None, None,
                             f"g{rng.randrange(n_groups)}"))
    return Inputs(sets={}, entries=tuple(entries), skipped=(), classes=tuple(classes))


def test_no_group_is_ever_on_two_sides_over_random_groupings(tmp_path):
    """200 seeded random groupings × rules: every group (and every content hash) in exactly one split, every image
    assigned, and the pool free of val/test groups; a drawable split is always drawn (an empty split is the only
    refusal, for too few groups)."""
    rng = random.Random(0)
    drawn = 0
    for trial in range(200):
        inputs = _random_inputs(rng)
        rule = SplitRule(seed=rng.randrange(100), test_fraction=rng.choice((0.1, 0.2, 0.3)),
                         val_fraction=rng.choice((0.1, 0.2)), fixed_test=False, groups="folder:1")
        try:
            splits = assign(inputs, rule=rule, path=tmp_path / f"s{trial}.json")
        except SSLProbeError as e:
            assert "is empty" in str(e) and "whole groups" in str(e)
            continue
        drawn += 1
        sides: dict[str, set[str]] = {}
        for e in inputs.entries:
            if e.origin == "data":
                sides.setdefault(e.group, set()).add(splits.of_key[e.key])
        assert all(len(s) == 1 for s in sides.values()), sides
        g = guard(inputs, splits)
        held = {e.group for e, s in g.labelled if s != "train"}
        assert not held & {e.group for e in g.pool}
        assert json.loads((tmp_path / f"s{trial}.json").read_text())["groups"] == splits.group_of
    assert drawn >= 150


def test_the_draw_is_seeded_stratified_as_groups_allow_and_independent_of_order():
    by_unit = {f"g{i}": [f"{i}-{j}" for j in range(5)] for i in range(40)}
    label_of = {k: ("a" if int(k.split("-")[0]) % 2 else "b") for keys in by_unit.values() for k in keys}
    one = groups.draw(by_unit, label_of, seed=1, test_fraction=0.2, val_fraction=0.25, fixed={}, fixed_test=False)
    again = groups.draw(dict(reversed(by_unit.items())), label_of, seed=1, test_fraction=0.2, val_fraction=0.25,
                        fixed={}, fixed_test=False)
    other = groups.draw(by_unit, label_of, seed=2, test_fraction=0.2, val_fraction=0.25, fixed={}, fixed_test=False)
    assert one == again and one != other
    for c in "ab":  # 100 images a class in groups of 5: test 20, val 20 — hit exactly
        per = [sum(1 for k, s in one.items() if s == split and label_of[k] == c) for split in ("test", "val")]
        assert per == [20, 20]


def test_folder_levels_and_a_groups_csv(tmp_path):
    data = write_class_folder(tmp_path / "data", per_class=2, size=(8, 8))
    for c in ("dark", "light"):
        for i, p in enumerate(sorted((data / c).glob("*.png"))):
            (data / c / f"patient{i}" / "day1").mkdir(parents=True)
            p.rename(data / c / f"patient{i}" / "day1" / p.name)
    sets = open_sources(str(data), labels=None, test=None, unlabeled=None, image_column=None, label_column=None)
    inputs = hash_entries(sets, cache=HashCache(tmp_path / "h.json"))
    assert {e.group for e in groups.with_groups(inputs, "folder:1").entries} == {"patient0", "patient1"}
    assert {e.group for e in groups.with_groups(inputs, "folder:2").entries} == {"patient0/day1", "patient1/day1"}
    with pytest.raises(SSLProbeError, match="less than 3 folder level"):
        groups.with_groups(inputs, "folder:3")
    csv = tmp_path / "groups.csv"
    csv.write_text("path,group\n" + "".join(f"{e.id},{e.id.split('/')[0]}\n" for e in inputs.entries))
    assert {e.group for e in groups.with_groups(inputs, str(csv)).entries} == {"dark", "light"}
    csv.write_text("path,group\n" + f"{inputs.entries[0].id},x\n")
    with pytest.raises(SSLProbeError, match="names no group for 3 labelled image"):
        groups.with_groups(inputs, str(csv))
    csv.write_text("path,cohort\na.png,x\n")
    with pytest.raises(SSLProbeError, match="exactly the columns path,group"):
        groups.with_groups(inputs, str(csv))


def test_a_rerun_keeps_groups_together_and_a_test_group_takes_its_data_images_along(tmp_path):
    entries = [Entry("data", i, f"{i}.png", f"{i:064x}", "ab"[i % 2], None, f"g{i % 6}") for i in range(36)]
    inputs = Inputs(sets={}, entries=tuple(entries), skipped=(), classes=("a", "b"))
    rule = SplitRule(seed=0, test_fraction=0.2, val_fraction=0.2, fixed_test=False, groups="folder:1")
    first = assign(inputs, rule=rule, path=tmp_path / "s.json")
    more = Inputs(sets={}, entries=(*entries, Entry("data", 36, "36.png", f"{36:064x}", "a", None, "g0")),
                  skipped=(), classes=("a", "b"))
    second = assign(more, rule=rule, path=tmp_path / "s.json")
    assert second.of_key[f"{36:064x}"] == first.of_key[entries[0].key]  # the new image joins its group's split
    assert "1 new image(s) joined their group's split" in second.notes[0]
    test = Entry("test", 0, "t.png", "f" * 64, "a", None, "g3")  # a --test image of group g3
    fixed = Inputs(sets={}, entries=(*entries, test), skipped=(), classes=("a", "b"))
    splits = assign(fixed, rule=SplitRule(seed=0, test_fraction=0.2, val_fraction=0.2, fixed_test=True,
                                          groups="folder:1"), path=tmp_path / "t.json")
    g = guard(fixed, splits)
    kept = [k for k in g.kept_out if k["why"] == "its group 'g3' is a --test group"]
    assert len(kept) == 6 and all(e.group != "g3" for e, s in g.labelled if s != "test")
