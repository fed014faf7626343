"""Tests for :mod:`bitfitech.wire`."""
