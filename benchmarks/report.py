"""Render the generated blocks of README.md and docs/ from benchmarks/results/*.json and from
the code's registries, so no number in the docs is typed by hand.

Each block sits between `<!-- BEGIN results:NAME -->` and `<!-- END results:NAME -->` in the
doc its study names. To add a study, add ONE `Study` to STUDIES below (its name, the doc it
goes in, its render function and its results files) and run this script: a doc or block that
does not exist yet is created (at the end of the doc), and --check fails until it is.

    python benchmarks/report.py            # rewrite every generated block in place
    python benchmarks/report.py --check    # exit 1 if any block is stale, missing or unknown
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.break_even import render_break_even  # noqa: E402
from benchmarks.input_path import render_input_path  # noqa: E402
from benchmarks.online_vs_offline import render_accuracy  # noqa: E402
from benchmarks.render import reference  # noqa: E402
from benchmarks.render.cache import (  # noqa: E402
    cache_formats,
    cache_scale,
    cache_scale_runs,
    data_only,
    dump_scaling,
    dump_throughput,
)
from benchmarks.render.codecs import cache_bytes, codec_accuracy  # noqa: E402
from benchmarks.render.ensemble import ensemble  # noqa: E402
from benchmarks.render.online_vs_offline import (  # noqa: E402
    headline,
    online_vs_offline,
    student_recipe,
)
from benchmarks.render.studies import (  # noqa: E402
    data_free,
    near_duplicates,
    paddleclas_configs,
    ssld_pool,
)

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Study:
    """One generated block. `render` gets the loaded `results` files in order (none: a table
    from code); until they all exist the block says to run `run`."""

    name: str
    doc: str  # path from the repository root
    render: Callable[..., str]
    results: tuple[str, ...] = ()  # file names under benchmarks/results/
    run: str = ""  # the command that writes the results files


def _ensemble_run(extra: str, epochs: int = 3) -> str:
    return (
        f"python benchmarks/ensemble.py --images 4000 --teacher-epochs 3 --epochs {epochs} "
        f"--seeds 0,1,2{extra}"
    )


OVO = "docs/results/online_vs_offline.md"
ENS = "docs/results/ensembles.md"
CODECS = "docs/results/codecs.md"
CACHE = "docs/results/cache.md"
REF = "docs/reference.md"
ACCURACY = "online_vs_offline_accuracy.json"
SPEED = "online_vs_offline_speed.json"
SCALE_RUNS = ("cache_scale.json", "cache_scale_quiet.json", "cache_scale_quiet_long.json")

STUDIES: tuple[Study, ...] = (
    Study("headline", "README.md", headline, (ACCURACY, SPEED), "see docs/results/"),
    Study("offline_keys", "README.md", reference.offline_keys),
    Study("backends", REF, reference.backends),
    Study("codec_bytes", REF, reference.codec_bytes),
    Study("losses", REF, reference.losses),
    Study("codec_loss", REF, reference.codec_loss),
    Study("transform_ops", REF, reference.transform_ops),
    Study(
        "accuracy",
        OVO,
        online_vs_offline,
        (ACCURACY,),
        "python benchmarks/online_vs_offline.py --pair accuracy --seeds 0,1,2",
    ),
    Study(
        "student_recipe",
        OVO,
        student_recipe,
        ("online_vs_offline_accuracy_batch128.json", ACCURACY),
        "python benchmarks/online_vs_offline.py --pair accuracy --preset small --images 4000 "
        "--val-images 1000 --teacher-epochs 8 --epochs 4 --views 4 --online-bn eval "
        "--seeds 0,1,2,3,4",
    ),
    Study(
        "like_for_like",
        OVO,
        render_accuracy,
        ("online_vs_offline_like_for_like.json",),
        "python benchmarks/online_vs_offline.py --pair accuracy --preset small --images 4000 "
        "--val-images 1000 --teacher-epochs 8 --epochs 3 --seeds 0,1,2,3,4 "
        "--out benchmarks/results/online_vs_offline_like_for_like.json --quiet",
    ),
    Study(
        "break_even",
        OVO,
        render_break_even,
        ("break_even.json",),
        "python benchmarks/break_even.py --steps 16 --batch-size 32 --epochs 2 --repeats 3",
    ),
    Study(
        "speed",
        OVO,
        online_vs_offline,
        (SPEED,),
        "python benchmarks/online_vs_offline.py --pair speed --seeds 0,1,2",
    ),
    Study("ensemble", ENS, ensemble, ("ensemble.json",), _ensemble_run("")),
    Study(
        "ensemble_pair",
        ENS,
        ensemble,
        ("ensemble_pair.json",),
        _ensemble_run(
            " --teachers resnet18:0,resnet18:1 --out benchmarks/results/ensemble_pair.json"
        ),
    ),
    Study(
        "ensemble_pair_long",
        ENS,
        ensemble,
        ("ensemble_pair10.json",),
        _ensemble_run(
            " --teachers resnet18:0,resnet18:1 --out benchmarks/results/ensemble_pair10.json", 10
        ),
    ),
    Study(
        "ensemble_ssld",
        ENS,
        ensemble,
        ("ensemble_ssld.json",),
        _ensemble_run(" --teacher-images 1000 --out benchmarks/results/ensemble_ssld.json"),
    ),
    Study(
        "ensemble_disjoint",
        ENS,
        ensemble,
        ("ensemble_disjoint.json",),
        _ensemble_run(
            " --teacher-images 1000 --teacher-split disjoint"
            " --out benchmarks/results/ensemble_disjoint.json"
        ),
    ),
    Study(
        "codec_accuracy",
        CODECS,
        partial(codec_accuracy, png="benchmarks/results/codec_accuracy.png"),
        ("codec_accuracy.json",),
        "python benchmarks/codec_accuracy.py",
    ),
    Study(
        "codec_accuracy_pairs",
        CODECS,
        partial(codec_accuracy, png="benchmarks/results/codec_accuracy_pairs.png"),
        ("codec_accuracy_pairs.json",),
        "python benchmarks/codec_accuracy.py --task pairs",
    ),
    Study(
        "cache_bytes",
        CODECS,
        cache_bytes,
        ("cache_bytes.json",),
        "python benchmarks/cache_bytes.py",
    ),
    Study(
        "ssld_pool",
        "docs/results/select.md",
        ssld_pool,
        ("ssld_pool.json",),
        "python pipelines/ssld_pool.py",
    ),
    Study(
        "near_duplicates",
        "docs/results/select.md",
        near_duplicates,
        ("near_duplicates.json",),
        "python benchmarks/near_duplicates.py",
    ),
    Study(
        "dump_throughput",
        "docs/results/dump.md",
        dump_throughput,
        ("dump_throughput.json",),
        "python benchmarks/dump_throughput.py",
    ),
    Study(
        "dump_scaling",
        "docs/results/dump.md",
        dump_scaling,
        ("dump_scaling.json",),
        "python benchmarks/dump_scaling.py",
    ),
    Study(
        "cache_formats",
        CACHE,
        cache_formats,
        ("cache_formats.json",),
        "python benchmarks/cache_formats.py",
    ),
    Study("cache_scale", CACHE, cache_scale, (SCALE_RUNS[0],), "python benchmarks/cache_scale.py"),
    Study(
        "cache_scale_quiet",
        CACHE,
        cache_scale,
        (SCALE_RUNS[1],),
        "python benchmarks/cache_scale.py --sizes 10000,100000,1000000 "
        "--out benchmarks/results/cache_scale_quiet.json",
    ),
    Study(
        "cache_scale_quiet_long",
        CACHE,
        cache_scale,
        (SCALE_RUNS[2],),
        "python benchmarks/cache_scale.py --sizes 10000,100000,1000000 --batches 1000 "
        "--out benchmarks/results/cache_scale_quiet_long.json",
    ),
    Study("cache_scale_runs", CACHE, cache_scale_runs, SCALE_RUNS, "the three runs above"),
    Study("data_only", CACHE, data_only, ("data_only.json",), "python benchmarks/data_only.py"),
    Study(
        "input_path",
        "docs/results/input_path.md",
        render_input_path,
        ("input_path.json",),
        "python benchmarks/input_path.py --images 1000 --rounds 3 --views 2",
    ),
    Study(
        "data_free",
        "docs/results/data_free.md",
        data_free,
        ("data_free.json",),
        "python pipelines/data_free.py --preset real --out benchmarks/results/data_free.json",
    ),
    Study(
        "paddleclas_configs",
        "docs/results/paddleclas_configs.md",
        paddleclas_configs,
        ("paddleclas_configs.json",),
        "python benchmarks/paddleclas_configs.py",
    ),
)

BLOCK = re.compile(r"<!-- BEGIN results:(\w+) -->\n.*?<!-- END results:\1 -->", re.S)
LINK = re.compile(r"(\]\()(?![a-z]+:|#|/)([^)\s]+)(\))")


def load(name: str) -> dict | None:
    """A results file, with its recorded command made runnable anywhere: the interpreter
    path of the machine that ran it, or a bare script path, becomes `python`."""
    path = RESULTS / name
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    if isinstance(r.get("command"), str):
        command = re.sub(r"^\S*/python[0-9.]*(?=\s)", "python", r["command"])
        if re.match(r"\S+\.py(\s|$)", command):
            command = f"python {command}"
        r["command"] = command
    return r


def relink(body: str, doc: str) -> str:
    """Render functions link from the repository root; a doc's links start from its folder."""
    base = (ROOT / doc).parent

    def one(m: re.Match) -> str:
        target = Path(os.path.relpath(ROOT / m.group(2), base)).as_posix()
        return f"{m.group(1)}{target}{m.group(3)}"

    return LINK.sub(one, body)


def block(study: Study) -> str:
    """The study's block, markers included."""
    loaded = [load(name) for name in study.results]
    if any(r is None for r in loaded):
        body = f"_not measured yet: run `{study.run}`_"
    else:
        body = relink(study.render(*loaded), study.doc)
    return f"<!-- BEGIN results:{study.name} -->\n{body}\n<!-- END results:{study.name} -->"


def render_doc(doc: str, text: str) -> str:
    """`text` (the doc's content, empty if it does not exist) with every block of its studies
    rewritten; a study's block missing from the doc is appended at its end."""
    mine = {s.name: s for s in STUDIES if s.doc == doc}
    text = BLOCK.sub(lambda m: block(mine[m[1]]) if m[1] in mine else m[0], text)
    for name, study in mine.items():
        if f"<!-- BEGIN results:{name} -->" not in text:
            text = (text.rstrip("\n") + "\n\n" if text else f"# {name}\n\n") + block(study) + "\n"
    return text


def docs() -> list[str]:
    """Every doc that may hold blocks: README.md and docs/**/*.md, plus every study's doc."""
    found = ["README.md", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))]
    return sorted(set(found) | {s.doc for s in STUDIES})


def problems() -> list[str]:
    """What --check fails on: a stale or missing block, or a block no study renders."""
    names = [s.name for s in STUDIES]
    out = [
        f"study {n!r} registered twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    for doc in docs():
        path = ROOT / doc
        old = path.read_text() if path.exists() else ""
        for m in BLOCK.finditer(old):
            owner = next((s.doc for s in STUDIES if s.name == m[1]), None)
            if owner != doc:
                out.append(f"{doc}: block {m[1]!r} is not a study of this doc (STUDIES)")
        if render_doc(doc, old) != old:
            out.append(f"{doc}: generated blocks are stale or missing")
    return out


@click.command()
@click.option("--check", is_flag=True, help="Exit 1 if a generated block is stale or missing.")
def main(check: bool) -> None:
    """Rewrite the generated blocks of README.md and docs/ from benchmarks/results/*.json.

    \b
    Example:
      python benchmarks/report.py
      python benchmarks/report.py --check
    """
    if check:
        found = problems()
        for line in found:
            click.echo(line, err=True)
        if found:
            click.echo("run: python benchmarks/report.py", err=True)
        sys.exit(1 if found else 0)
    changed = []
    for doc in docs():
        path = ROOT / doc
        old = path.read_text() if path.exists() else ""
        new = render_doc(doc, old)
        if new != old:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new)
            changed.append(doc)
    click.echo(
        f"rewritten: {', '.join(changed)}" if changed else "every generated block is up to date"
    )


if __name__ == "__main__":
    main()
