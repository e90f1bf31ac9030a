"""sida room: ui."""

PROJECT = 'sida'
