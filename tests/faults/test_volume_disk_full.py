"""A full disk under the volumes and secrets: an import or a new value fails, nothing is lost.

The fault is real: the state directory is a small tmpfs, mounted in a user
and mount namespace of the test's own (``unshare --user --map-root-user
--mount``: no root needed), and filled by the import itself (an archive
bigger than what is free) or beforehand. The volume must hold what it held
before, with no half-unpacked directory left beside it; a secret must keep
its old value, with no temporary file left, and no error may carry a
value.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, sys
from pathlib import Path
from squish.errors import LayerError
from squish.layers.secrets import Secrets
from squish.layers.volumes import Volumes

root, archive = Path(sys.argv[1]), Path(sys.argv[2])
volumes = Volumes(root / "volumes")
data = volumes.ensure("v")
(data / "keep").write_text("precious\n")
try:
    volumes.import_archive("v", archive, label="the archive")
except LayerError as exc:
    print("import refused:", exc)
else:
    print("import took it")
print("volume holds:", sorted(p.name for p in data.iterdir()), (data / "keep").read_text().strip())
print("left beside it:", sorted(p.name for p in (root / "volumes").iterdir() if p.name != "v"))

secrets = Secrets(root / "secrets")
secrets.create("token", b"old-value")
filler = root / "filler"
with filler.open("wb") as out:
    try:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    except OSError:
        pass
try:
    secrets.create("token", b"new-value-" + b"n" * 200000)
except LayerError as exc:
    print("secret refused:", exc)
print("secret holds:", secrets.get("token").path.read_bytes().decode())
print("secrets beside it:", sorted(p.name for p in (root / "secrets").iterdir()))
"""


def test_a_full_disk_loses_no_volume_and_no_secret(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed"
    state = tmp_path / "state"
    state.mkdir()
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as out:
        member = tarfile.TarInfo("big")
        member.size = 2 << 20  # more than the 1 MiB tmpfs
        out.addfile(member, io.BytesIO(b"\1" * member.size))
    done = subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            'mount -t tmpfs -o size=1m squish-state "$1" && shift && exec "$@"',
            "sh",
            str(state),
            sys.executable,
            "-c",
            SCRIPT,
            str(state),
            str(archive),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "import refused: cannot unpack the archive: No space left on device"
    assert lines[1] == "volume holds: ['keep'] precious"
    assert lines[2] == "left beside it: []"
    assert lines[3].startswith("secret refused: cannot store secret token: No space left")
    assert "new-value" not in lines[3]
    assert lines[4] == "secret holds: old-value"
    assert lines[5] == "secrets beside it: ['token']"
