"""Print pyproject.toml's dependencies plus those of the extras named in argv[1] (comma
separated), one per line: the Docker build installs them before the code is copied in."""

import sys

import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e.strip()]
lines = list(project["dependencies"])
for extra in extras:
    lines += project["optional-dependencies"][extra.strip()]
print("\n".join(lines))
