"""twistd plugin: ``twistd bitfi`` (lazy: nothing is imported until used)."""

from twisted.application.service import ServiceMaker

bitfi = ServiceMaker(
    "bitfi", "bitfitech.tap", "A peer-to-peer exchange node (orderbook replica).", "bitfi"
)
