"""Tests for :mod:`bitfitech.api`."""
