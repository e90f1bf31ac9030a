"""`sida train`: not built yet; the command says so in one line and exits 2."""

from sida.not_built import train  # noqa: F401
