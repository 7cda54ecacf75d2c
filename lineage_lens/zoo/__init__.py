"""The lineage zoo: small, project-made model families, built offline, seeded and cached.

No 7B checkpoint can be downloaded here, so the zoo *builds* the lineages the analyses need:

* profile ``"test"`` -- the tiny synthetic family (``base``, ``instruct``, ``vlm``, ``control``)
  trained on a synthetic world of facts and contexts (:mod:`lineage_lens.zoo.world`) and on
  rendered images (:mod:`lineage_lens.zoo.images`); a minute or so on a laptop CPU;
* profile ``"demo"`` -- ``smollm2-vlm``, a LLaVA whose language model is SmolLM2-135M-Instruct
  (the ``make demo`` lineage; ~10 minutes on 2 CPU cores);
* profile ``"full"`` -- all of the above and ``smollm2-ft``, a fine-tune of SmolLM2-135M-Instruct.

Every member is a Hugging Face directory with its tokenizer (``load_model(zoo.path("base"))``).
Members are content-addressed (see :mod:`lineage_lens.zoo.recipes`): a second build reuses them, a
changed recipe rebuilds. ``manifest.json`` in the zoo directory records each member's parent, recipe,
what was trained, wall time, final losses and build-time checks.

Typical use::

    from lineage_lens.zoo import build_zoo
    zoo = build_zoo(profile="test")
    base, vlm = zoo.path("base"), zoo.path("vlm")
    zoo.to_frame()

Probing data: :func:`world_probe_examples` (text: context, question, truthful vs hallucinated
answer, from the world the tiny members learned) and :func:`scene_probe_examples` (image-grounded:
a rendered scene, a question about it, truthful vs hallucinated answer; probe the multimodal
members with :data:`~lineage_lens.zoo.train.VLM_PROBE_TEMPLATE` and ``condition="image"``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from lineage_lens.errors import ConfigError, DataError
from lineage_lens.fileio import atomic_open, publish_dir, sigterm_as_exit, tmp_build_dir
from lineage_lens.zoo.images import scene_probe_examples, write_scene_probe_set
from lineage_lens.zoo.recipes import (
    ANCESTOR,
    PROFILE_MEMBERS,
    PROFILES,
    ZOO_CODE_VERSION,
    MemberSpec,
    profile_specs,
    recipe_hash,
)
from lineage_lens.zoo.world import World, world_probe_examples

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MEMBER_RECORD = "zoo_member.json"


@dataclass
class ZooMember:
    """One built member: where it is, where it comes from, how it was made and what it measured."""

    name: str
    path: str
    parent: str | None
    parent_path: str | None
    kind: str
    recipe: dict[str, Any]
    hash: str
    description: str = ""
    trained: dict[str, Any] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0
    built_at: str = ""
    code_version: str = ZOO_CODE_VERSION
    #: torch / transformers versions, CPU threads and machine of the build: the content address
    #: covers the recipe, not these, and training is only bit-reproducible when they match.
    environment: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("reused")
        return d


@dataclass
class Zoo:
    """The members of a built zoo (from :func:`build_zoo` or :func:`load_zoo`)."""

    root: Path
    members: dict[str, ZooMember]

    def path(self, name: str) -> Path:
        """Directory of member ``name`` (a HF model directory with its tokenizer)."""
        if name not in self.members:
            raise ConfigError(
                f"the zoo at {self.root} has no member {name!r} (has: {', '.join(self.members)}); "
                "build a profile that contains it."
            )
        return Path(self.members[name].path)

    def world(self, name: str = "base") -> World:
        """The synthetic world a tiny member was trained on."""
        return World.load(self.path(name))

    def to_frame(self) -> pd.DataFrame:
        """One row per member: parent, kind, wall time, final losses and checks."""
        rows = []
        for m in self.members.values():
            row: dict[str, Any] = {
                "member": m.name,
                "parent": m.parent,
                "kind": m.kind,
                "wall_time_s": m.wall_time_s,
                "dir": Path(m.path).name,
            }
            row.update({f"loss_{k}": v for k, v in m.losses.items()})
            row.update(m.checks)
            rows.append(row)
        return pd.DataFrame(rows).set_index("member")


#: A member builder: ``(recipe, parent_path or None, out_dir) -> info`` trains the member into
#: ``out_dir`` and returns its ``trained`` / ``losses`` / ``checks`` records (all optional).
MemberBuilder = Callable[[dict[str, Any], Path | None, Path], dict[str, Any]]


def member_builders() -> dict[str, MemberBuilder]:
    """The builder of each member kind; :func:`build_zoo` looks them up here at every build."""
    from lineage_lens.zoo import real, synthetic

    return {
        "tiny_base": synthetic.build_tiny_base,
        "tiny_instruct": synthetic.build_tiny_instruct,
        "vlm": synthetic.build_vlm,
        "smollm2_ft": real.build_smollm2_ft,
    }


def default_zoo_dir() -> Path:
    """``cache_dir()/"zoo"`` (``$LINEAGE_LENS_CACHE/zoo``)."""
    from lineage_lens.models import cache_dir

    return cache_dir() / "zoo"


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        return {"members": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt zoo manifest ({exc}); delete it to rebuild.", path=path) from exc
    data.setdefault("members", {})
    return data


def _member_from_record(record: dict[str, Any], path: Path, reused: bool) -> ZooMember:
    fields = set(ZooMember.__dataclass_fields__) - {"reused", "path"}
    kw = {k: v for k, v in record.items() if k in fields}
    return ZooMember(path=str(path), reused=reused, **kw)


def _ancestor_path_and_hash(alias: str) -> tuple[Path, str]:
    from lineage_lens.models import resolve_model_path

    path = Path(resolve_model_path(alias))
    return path, f"{alias}:{path.name}"


def build_environment() -> dict[str, Any]:
    """What a bit-for-bit rebuild needs besides the recipe: library versions, threads, machine."""
    import platform

    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


@contextmanager
def _threads(n: int | None):
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build_zoo(
    out_dir: str | Path | None = None,
    profile: str = "test",
    *,
    members: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    threads: int | None = None,
) -> Zoo:
    """Build (or reuse) the zoo members of ``profile`` under ``out_dir`` and return the :class:`Zoo`.

    Args:
        out_dir: zoo directory; defaults to :func:`default_zoo_dir`.
        profile: ``"test"`` (tiny synthetic family), ``"demo"`` (``smollm2-vlm``) or ``"full"``
            (both, and ``smollm2-ft``).
        members: build only these members of the profile (and their parents).
        overrides: recipe changes by member name, e.g. ``{"base": {"steps": 50}}``; a changed
            recipe gets a new content address, so it is built beside the old one.
        force: rebuild even when a member with the same address exists.
        threads: torch CPU threads during the build (``None`` keeps torch's setting); a recipe
            with its own ``threads`` (the tiny members: 1, for bit-reproducible builds) keeps it.

    Each member is trained in a temporary directory and renamed into place only when complete,
    then ``manifest.json`` is rewritten (atomically) with every member built so far. An
    interrupted build (an exception, Ctrl-C, SIGTERM) leaves no temporary directory; those of a
    build killed outright (SIGKILL) are removed by the next build in the same zoo directory.
    """
    root = Path(out_dir) if out_dir is not None else default_zoo_dir()
    specs = profile_specs(profile, overrides)
    if members is not None:
        wanted = set(members)
        unknown = wanted - {s.name for s in specs}
        if unknown:
            raise ConfigError(
                f"members {sorted(unknown)} are not in profile {profile!r} "
                f"({', '.join(PROFILE_MEMBERS[profile])})."
            )
        by_name = {s.name: s for s in specs}
        for name in list(wanted):  # add ancestors inside the zoo
            parent = by_name[name].parent
            while parent in by_name:
                wanted.add(parent)
                parent = by_name[parent].parent
        specs = [s for s in specs if s.name in wanted]
    root.mkdir(parents=True, exist_ok=True)
    builders = member_builders()
    built: dict[str, ZooMember] = {}
    # SIGTERM ends the build through SystemExit, so no temporary file or directory is left
    with sigterm_as_exit(), _threads(threads):
        with tqdm(specs, desc=f"zoo ({profile})", unit="member") as bar:
            for spec in bar:
                bar.set_postfix(member=spec.name)
                built[spec.name] = build_member(
                    spec, root, builders[spec.kind], built=built, force=force
                )
        manifest = _read_manifest(root)
        manifest["code_version"] = ZOO_CODE_VERSION
        for name, member in built.items():
            manifest["members"][name] = {**member.to_dict(), "path": Path(member.path).name}
        with atomic_open(root / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
    return Zoo(root, built)


def build_member(
    spec: MemberSpec,
    root: Path,
    builder: MemberBuilder,
    *,
    built: dict[str, ZooMember] | None = None,
    force: bool = False,
) -> ZooMember:
    """Build (or reuse) one member under ``root``, at its content address ``{name}-{hash}``.

    The member is trained by ``builder`` into a temporary directory, which is renamed into place
    only when complete (its record written last). A member already at the address is reused
    unless ``force``; if another process finishes the same address first, its build is kept and
    ours dropped. ``built`` holds the members built so far (a parent is looked up there, else it
    must be the ancestor).
    """
    built = {} if built is None else built
    parent_path: Path | None = None
    parent_hash: str | None = None
    if spec.parent is not None:
        if spec.parent in built:
            parent_path, parent_hash = Path(built[spec.parent].path), built[spec.parent].hash
        elif spec.parent == ANCESTOR:
            parent_path, parent_hash = _ancestor_path_and_hash(spec.parent)
        else:
            raise ConfigError(f"parent {spec.parent!r} of {spec.name!r} is not built.")
    digest = recipe_hash(spec.kind, spec.recipe, parent_hash)
    final = root / f"{spec.name}-{digest[:12]}"
    record_path = final / MEMBER_RECORD
    if record_path.is_file() and not force:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        log.info("zoo: reusing %s (%s)", spec.name, final.name)
        return _member_from_record(record, final, reused=True)
    # whatever is left of tmp when the block exits (an exception, Ctrl-C, SIGTERM, a lost race)
    # is removed; the leftovers of a SIGKILLed build are swept by the next one
    with tmp_build_dir(root, final.name) as tmp:
        t0 = time.perf_counter()
        with _threads(spec.recipe.get("threads")):  # a recipe's thread count wins
            info = builder(spec.recipe, parent_path, tmp)
            environment = build_environment()
        wall = time.perf_counter() - t0
        member = ZooMember(
            name=spec.name,
            path=str(final),
            parent=spec.parent,
            parent_path=str(parent_path) if parent_path is not None else None,
            kind=spec.kind,
            recipe=spec.recipe,
            hash=digest,
            description=spec.description,
            trained=info.get("trained", {}),
            losses=info.get("losses", {}),
            checks=info.get("checks", {}),
            wall_time_s=round(wall, 2),
            built_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            environment=environment,
        )
        with atomic_open(tmp / MEMBER_RECORD, "w", encoding="utf-8") as fh:
            json.dump(member.to_dict(), fh, indent=1, sort_keys=True)
        # the record is written last, so a directory holding it is complete
        if not publish_dir(tmp, final, marker=MEMBER_RECORD, replace=force):
            log.info("zoo: %s was built meanwhile by another process; reusing it", final.name)
            record = json.loads(record_path.read_text(encoding="utf-8"))
            return _member_from_record(record, final, reused=True)
    log.info("zoo: built %s in %.1f s -> %s", spec.name, wall, final)
    return member


def load_zoo(out_dir: str | Path | None = None) -> Zoo:
    """The zoo recorded in ``out_dir``'s ``manifest.json`` (members whose directory exists)."""
    root = Path(out_dir) if out_dir is not None else default_zoo_dir()
    manifest = _read_manifest(root)
    if not manifest["members"]:
        raise DataError(
            "no zoo here; build one with `lineage-lens zoo build --profile test`.", path=root
        )
    members = {}
    for name, record in manifest["members"].items():
        path = root / record["path"]
        if path.is_dir():
            members[name] = _member_from_record(record, path, reused=True)
    return Zoo(root, members)


__all__ = [
    "MANIFEST",
    "MEMBER_RECORD",
    "PROFILES",
    "MemberBuilder",
    "World",
    "Zoo",
    "ZooMember",
    "build_member",
    "build_zoo",
    "default_zoo_dir",
    "load_zoo",
    "member_builders",
    "scene_probe_examples",
    "world_probe_examples",
    "write_scene_probe_set",
]
