"""A BitTorrent BEP 5 Kademlia DHT on Twisted (see ``docs/discovery.rst``)."""
