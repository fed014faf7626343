"""Tests for :mod:`bitfitech.market`."""
