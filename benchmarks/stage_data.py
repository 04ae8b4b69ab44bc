"""Stage CIFAR-100 for a machine that sees only the repository (a lent GPU machine).

    python -m benchmarks.stage_data                    # split the npz files into .stage/cifar100/
    python -m benchmarks.stage_data --join FOLDER      # on the other machine: join them back

Splitting writes each ``cifar100_{train,test}.npz`` of the data root (default:
``avalanche_balanced.data.default_data_root()``) as parts of at most
``--part_mib`` MiB, plus ``manifest.json`` with each file's SHA-256, so that
the parts can travel in separate carries of at most 64 MiB. Joining
concatenates the parts present, checks the SHA-256 and writes the npz files;
it is a no-op when they are already there and intact.
"""
import argparse
import hashlib
import json
import shutil
from pathlib import Path

FILES = ("cifar100_train.npz", "cifar100_test.npz", "cifar100_meta.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split(root: Path, dest: Path, part_mib: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name in FILES:
        src = root / name
        if not src.is_file():
            if name.endswith(".npz"):
                raise FileNotFoundError(f"{src} is missing: staging needs the npz layout")
            continue
        parts = []
        with open(src, "rb") as f:
            for i, block in enumerate(iter(lambda: f.read(part_mib << 20), b"")):
                part = dest / f"{name}.part{i}"
                part.write_bytes(block)
                parts.append(part.name)
        manifest[name] = dict(sha256=sha256(src), parts=parts)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for name, entry in manifest.items():
        print(f"{name}: {', '.join(entry['parts'])}")


def join(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest.items():
        target = folder / name
        if target.is_file() and sha256(target) == entry["sha256"]:
            continue
        missing = [p for p in entry["parts"] if not (folder / p).is_file()]
        if missing:
            raise FileNotFoundError(f"cannot join {name}: parts {missing} are not in {folder}")
        with open(target, "wb") as out:
            for part in entry["parts"]:
                with open(folder / part, "rb") as f:
                    shutil.copyfileobj(f, out)
        if sha256(target) != entry["sha256"]:
            target.unlink()
            raise ValueError(f"{name}: joined parts do not match the SHA-256 in the manifest")
        print(f"joined {name} from {len(entry['parts'])} parts")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="data folder to split (default: the library's data root)")
    p.add_argument("--dest", default=".stage/cifar100")
    p.add_argument("--part_mib", type=int, default=28)
    p.add_argument("--join", metavar="FOLDER", default=None)
    args = p.parse_args(argv)
    if args.join:
        join(Path(args.join))
        return
    from avalanche_balanced.data import default_data_root
    split(Path(args.root) if args.root else default_data_root(), Path(args.dest), args.part_mib)


if __name__ == "__main__":
    main()
