"""Tests for the port-mapping client (:mod:`bitfitech.nat`)."""
