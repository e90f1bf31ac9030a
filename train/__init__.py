"""sida room: train."""

PROJECT = 'sida'
