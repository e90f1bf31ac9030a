"""sida: one-step image generators distilled with Score identity Distillation (SiD / SiDA)."""

__version__ = '0.1.0'
