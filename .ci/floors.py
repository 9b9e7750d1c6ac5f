#!/usr/bin/env python3
"""Print `name==floor` for every dependency of the core and the given extras (pyproject.toml), for
`make test-min`: the oldest releases the package claims to work with, installed and tested.

    python3 .ci/floors.py train          # core + [train]
    python3 .ci/floors.py train --skip torch torchvision
"""

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def floors(extras: list[str], skip: set[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    pinned: dict[str, str] = {}  # name -> the highest floor that names it (an extra may raise the core's)
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*", line.split(";")[0])
        if match is None:
            raise SystemExit(f"{line!r}: not NAME>=FLOOR; every dependency states its floor")
        name, floor = match.group(1).lower(), match.group(2)
        if name not in skip and _release(floor) >= _release(pinned.get(name, "0")):
            pinned[name] = floor
    return [f"{name}=={floor}" for name, floor in pinned.items()]


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("extras", nargs="*", help="optional-dependency groups to include")
    parser.add_argument("--skip", nargs="*", default=[], help="distributions to leave out (installed otherwise)")
    args = parser.parse_args()
    print("\n".join(floors(args.extras, {name.lower() for name in args.skip})))
