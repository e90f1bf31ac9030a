"""sida room: export."""

PROJECT = 'sida'
