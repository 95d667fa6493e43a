"""Resource limits on what a user hands in: attack configs are bounded before they are built.

A 1 KB YAML of nested aliases (the "billion laughs") expands to hundreds of millions of
values; it took a minute and 3.7 GB before. It must be refused from the node graph, which
shares aliased values, before anything is expanded. Oversized files are refused before
they are parsed.
"""

from __future__ import annotations

import tracemalloc

import pytest

from poisonguard.pipelines.cli import main
from poisonguard.schemas import ConfigError
from poisonguard.simulators.config import MAX_CONFIG_BYTES, MAX_CONFIG_VALUES, load_attack_config


def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    lines.append(f"attacks: [*a{levels - 1}]")
    text = "\n".join(lines) + "\n"
    return text + "#" * (1024 - len(text) - 1) + "\n"  # 1 KB


def test_a_1kb_alias_bomb_is_refused_without_expanding_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size == 1024
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=f"more than {MAX_CONFIG_VALUES} values once its aliases"):
            load_attack_config(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # expanded, it would be gigabytes


def test_the_cli_refuses_it_in_one_line(tmp_path, capsys):
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    (tmp_path / "a.csv").write_text("f1,label\n1,0\n2,1\n")
    code = main(["simulate", str(tmp_path / "a.csv"), "--config", str(tmp_path / "bomb.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bomb.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_small_alias_is_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("seed: 3\nattacks:\n"
                    "  - &flip {kind: label_flip, mode: random, rate: 0.1}\n"
                    "  - {kind: backdoor, trigger: {features: {f1: 9.0}}, target: '1', rate: 0.05}\n")
    config = load_attack_config(str(path))
    assert [a.kind for a in config.attacks] == ["label_flip", "backdoor"] and config.seed == 3


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("attacks: &loop [*loop]\n")
    with pytest.raises(ConfigError, match="recursive"):
        load_attack_config(str(path))


def test_an_oversized_config_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as fh:
        fh.write("attacks:\n  - {kind: label_flip, mode: random, rate: 0.1}\n")
        fh.write(("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1)))
    with pytest.raises(ConfigError, match="an attack config is at most 1 MB"):
        load_attack_config(str(path))


def test_deep_nesting_is_one_error_not_a_crash(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("attacks: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml"):
        load_attack_config(str(path))


def test_5000_classes_of_2_rows_add_little_memory_and_keep_a_2_mb_report(tmp_path):
    """Memory grew 1-2 MB per class whatever the rows (dense 20,001-bin histograms per class, a gradient-boosting
    model with a tree per class per round): 5,000 classes of 2 rows took 4.5-8.5 GB and wrote a 40 MB report.json.
    The screen runs in a child process, which reports its own peak resident memory. The same 10,000 rows in 10
    classes are the baseline, measured in the same environment: the process's own peak depends on it (in the full
    suite, 150-190 MB above the same command run alone, 2026-11-30), what the classes add does not."""
    import json
    import subprocess
    import sys

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(10_000, 8)), columns=[f"f{j}" for j in range(8)])
    frame.insert(0, "id", np.arange(10_000))
    script = ("import resource, sys\nfrom poisonguard.pipelines.cli import main\nrc = main(sys.argv[1:])\n"
              "print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    peaks = {}
    for classes in (10, 5000):
        frame["label"] = np.repeat([f"c{i}" for i in range(classes)], 10_000 // classes)
        frame.to_parquet(tmp_path / f"classes{classes}.parquet")
        out = tmp_path / f"out{classes}"
        done = subprocess.run([sys.executable, "-c", script, "screen", str(tmp_path / f"classes{classes}.parquet"), "--out",
                               str(out), "--id-column", "id", "--label-column", "label"], capture_output=True, text=True,
                              timeout=900)
        rc, peak_kb = done.stdout.split()[-2:]
        assert rc in ("0", "1"), done.stderr
        peaks[classes] = int(peak_kb) >> 10  # ru_maxrss is in KB on Linux
    assert rc == "0"
    # alone, 10 classes peak at 656 MB and 5,000 at 886-912 MB; padded per-class arrays took it to 1,220-1,280 MB
    assert peaks[5000] - peaks[10] < 400 and peaks[5000] < 1536, f"peak resident memory {peaks} MB"
    assert (out / "report.json").stat().st_size < 2 << 20
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["cleaned"] + report["counts"]["quarantine"] == 10_000
    assert len(report["classes"]) + report["other_classes"]["classes"] == 5000
    assert report["other_classes"]["rows"] + sum(c["rows"] for c in report["classes"].values()) == 10_000
    assert len(report["decision"]["classes"]) == len(report["classes"])
