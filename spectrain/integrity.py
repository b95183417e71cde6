"""Tamper evidence for registered drafts: the sha256 of every file of a draft is recorded when it is registered,
and every download spectrain makes checks the files against that record.

The record has two parts: a manifest (relative path -> sha256) logged next to the draft in the run's artifacts,
and the sha256 of that manifest as a tag of the model version, which lives in the registry's database rather than
in the artifact store. A file swapped in the store, or a manifest rewritten to match it, no longer matches the
registry's tag and is refused, naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from spectrain.errors import SpectrainError

MANIFEST = "draft_manifest.json"  # run artifact beside draft/: {relative path: sha256 of the file}
DIGEST_TAG = "draft_sha256"  # model version tag: the sha256 of that manifest
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative, '/'-separated) -> its sha256."""
    return {
        path.relative_to(folder).as_posix(): file_sha256(path) for path in sorted(folder.rglob("*")) if path.is_file()
    }


def manifest(folder: Path) -> str:
    """The manifest of ``folder`` as logged (one canonical text, so its digest is reproducible)."""
    return json.dumps(file_digests(folder), sort_keys=True, indent=1) + "\n"


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def verify(folder: Path, manifest_text: str, recorded: str, what: str) -> None:
    """Refuse ``folder`` unless its files are exactly those of ``manifest_text`` and the manifest is the one whose
    digest the registry recorded (``recorded``)."""
    fix = "do not serve it: find who wrote to the artifact store, and register the draft again from its pipeline run"
    if not recorded:
        raise SpectrainError(
            f"{what} has no {DIGEST_TAG} tag, so its files cannot be checked",
            where=what,
            fix="register the draft again with this spectrain (it records the sha256 of every file)",
        )
    if digest(manifest_text) != recorded:
        raise SpectrainError(
            f"{what}: the manifest in the artifact store ({MANIFEST}) is not the one the registry recorded",
            where=what,
            fix=fix,
        )
    expected, found = json.loads(manifest_text), file_digests(folder)
    problems = [
        f"{name} changed (sha256 {found[name][:12]}…, registered {sha[:12]}…)"
        for name, sha in expected.items()
        if name in found and found[name] != sha
    ]
    problems += [f"{name} is missing" for name in expected if name not in found]
    problems += [f"{name} was not registered" for name in found if name not in expected]
    if problems:
        raise SpectrainError(
            f"{what} is not the draft that was registered: {'; '.join(problems)}", where=str(folder), fix=fix
        )
