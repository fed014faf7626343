"""Integration: CA trust for bootstrap host names (``--ca-bundle``, ``--certificate``) on loopback.

Every node listens on 127.0.0.1; a dialler reaches a seed by the name
``localhost`` (a host name: CA trust applies) or by ``127.0.0.1`` (an IP
literal: node keys only).  The CAs and certificates are made in the test.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from bitfitech.address import PeerAddress
from bitfitech.identity import NodeIdentity, load_or_create_identity
from bitfitech.listening import StartupError
from bitfitech.node import Node
from bitfitech.peer.tls import node_private_key
from bitfitech.testing import (
    HANG_GUARD,
    CertificateAuthority,
    ClusterTestCase,
    poll_until,
    wait_for,
    write_pem,
)


class CATrustTests(ClusterTestCase):
    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.base = self.cluster.base_dir
        self.ca = CertificateAuthority()
        self.bundle = write_pem(os.path.join(self.base, "ca.pem"), self.ca.certificate)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def next_identity(self) -> NodeIdentity:
        """The key of the next node the cluster starts (made now, in its data directory)."""
        data_dir = os.path.join(self.base, f"node{len(self.cluster.nodes)}")
        os.makedirs(data_dir, mode=0o700)
        return load_or_create_identity(data_dir)

    def start_seed(self, *host_names: str, ca: CertificateAuthority | None = None) -> Node:
        """
        A node presenting a certificate from C{ca} (the test CA) naming
        C{host_names}, followed by C{ca}'s own when C{ca} is an intermediate.
        """
        identity = self.next_identity()
        ca = ca or self.ca
        leaf = ca.issue(node_private_key(identity).public_key(), *host_names)
        chain = [leaf] if ca is self.ca else [leaf, ca.certificate]
        path = write_pem(os.path.join(self.base, f"seed{len(self.cluster.nodes)}.pem"), *chain)
        return self.cluster.start_node(certificate=path)

    def dial(self, seed: Node, host: str = "localhost", bundle: str | None = None) -> Node:
        """A node with the CA bundle that bootstraps to C{seed} by C{host}."""
        address = PeerAddress(host, seed.peers.listen_port)
        return self.cluster.start_node(ca_bundle=bundle or self.bundle, bootstrap=[address])

    async def linked(self, a: Node, b: Node) -> None:
        await wait_for([a, b], lambda: len(a.peers.hub.links) == 1 == len(b.peers.hub.links),
                       HANG_GUARD, self.reactor, "a link")  # fmt: skip

    async def refused(self, dialer: Node, seed: Node, reason: str) -> None:
        """The dial to C{seed} failed for C{reason}, logged at warn; nobody was scored."""
        await poll_until(self.reactor, lambda: dialer.peers.dialer.dial_failures >= 1, HANG_GUARD,
                         "a failed dial")  # fmt: skip
        warnings = [
            e["reason"] for e in self.events
            if e["log_level"] == LogLevel.warn and "bootstrap host" in e["log_format"]
        ]  # fmt: skip
        self.assertTrue(warnings, "no warning")
        self.assertIn(reason, warnings[0])
        await poll_until(self.reactor, lambda: not seed.peers.hub.pending, HANG_GUARD,
                         "the seed's side")  # fmt: skip
        for node in (dialer, seed):
            self.assertEqual(node.peers.hub.links, {})
            self.assertEqual(node.peers.hub.misbehaviour_count, 0)

    async def test_certified_seed_links(self) -> None:
        seed = self.start_seed("localhost")
        dialer = self.dial(seed)
        await self.linked(seed, dialer)
        self.assertEqual(list(dialer.peers.hub.links), [seed.storage.identity.node_id])
        [row] = dialer.control.peers()
        self.assertEqual(row["tls"], "TLSv1.3")

    async def test_chain_through_an_intermediate_links(self) -> None:
        seed = self.start_seed("localhost", ca=CertificateAuthority("issuing CA", self.ca))
        await self.linked(seed, self.dial(seed))

    async def test_self_signed_seed_is_dropped(self) -> None:
        seed = self.cluster.start_node()
        await self.refused(self.dial(seed), seed, "self-signed")

    async def test_certificate_for_another_name_is_dropped(self) -> None:
        seed = self.start_seed("seed.example.org")
        await self.refused(self.dial(seed), seed, "not issued for localhost")

    async def test_certificate_from_another_ca_is_dropped(self) -> None:
        seed = self.start_seed("localhost", ca=CertificateAuthority("another CA"))
        await self.refused(self.dial(seed), seed, "not trusted by --ca-bundle")

    async def test_ip_literal_bootstrap_is_not_affected(self) -> None:
        seed = self.cluster.start_node()  # self-signed
        dialer = self.dial(seed, host="127.0.0.1")
        await self.linked(seed, dialer)

    async def test_certified_seed_links_with_peers_without_a_bundle(self) -> None:
        seed = self.start_seed("localhost")
        plain = self.cluster.start_node(bootstrap_to=[seed])
        await self.linked(seed, plain)


class StartupTests(ClusterTestCase):
    """Certificate files that cannot be used stop the start with a message naming them."""

    def setUp(self) -> None:
        super().setUp()
        self.base = self.cluster.base_dir
        self.ca = CertificateAuthority()

    def refused(self, **changes: Any) -> str:
        error = self.assertRaises(StartupError, self.cluster.start_node, **changes)
        return str(error)

    def test_certificate_for_another_key(self) -> None:
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        path = write_pem(os.path.join(self.base, "other.pem"), self.ca.issue(other, "localhost"))
        message = self.refused(certificate=path)
        self.assertIn(f"--certificate {path}", message)
        self.assertIn("not for this node's key", message)

    def test_certificate_for_another_node(self) -> None:
        stranger = node_private_key(NodeIdentity.from_seed(b"\x05" * 32)).public_key()
        path = write_pem(os.path.join(self.base, "n.pem"), self.ca.issue(stranger, "localhost"))
        self.assertIn("not for this node's key", self.refused(certificate=path))

    def test_files_that_are_not_pem(self) -> None:
        path = os.path.join(self.base, "junk.pem")
        with open(path, "w") as junk:
            junk.write("not a certificate\n")
        self.assertIn(f"--certificate {path}: no PEM certificate", self.refused(certificate=path))
        self.assertIn(f"--ca-bundle {path}: no PEM certificate", self.refused(ca_bundle=path))
