"""sapt's version and the name it is installed under."""

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"

# The distribution name (pip install, importlib.metadata): `sapt` on the package index is an unrelated project,
# so this one is sapt-cl. The import name and the command stay `sapt`.
DISTRIBUTION = "sapt-cl"
