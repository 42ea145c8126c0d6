from sapt.version import __version__
