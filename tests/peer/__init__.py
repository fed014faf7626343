"""Tests for :mod:`bitfitech.peer`."""
