"""Offline evaluation of every Scorer on the same requests, importable as ``recbrew.eval``."""
