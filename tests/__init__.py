"""Tests for bitfi."""
