"""sida room: serve."""

PROJECT = 'sida'
