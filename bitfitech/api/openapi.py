"""The OpenAPI 3.1 description of the HTTP API (``GET /openapi.json``).

Data path: none at run time; this module is the API's contract as Python
data, served as is.  Every route of :data:`bitfitech.api.resources.ROUTES`
is a path here, with its methods, parameters, request bodies, answers and
headers; schemas are JSON Schema 2020-12 in ``components``.  The tests
check the document against the routes the resources serve, and validate
real answers (and the live stream's events, listed under the
``x-sse-events`` extension of ``GET /stream``) against it.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from .. import __version__
from .jsonresource import (
    DEFAULT_LIMIT,
    MAX_BATCH,
    MAX_LIMIT,
    MAX_OFFSET,
    ORDER_STATES,
    ORDER_TYPES,
    ORDERS_LIMIT,
    SIDES,
)
from .stream import (
    BOOK_DEPTH,
    MAX_BACKLOG,
    MAX_CLIENTS,
    STATUS_INTERVAL,
    STREAM_TYPES,
    TICKET_LIFETIME,
)

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to schema C{name} of the components."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """C{schema} or ``null``."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(
    properties: dict[str, Schema], *, closed: bool = True, optional: tuple[str, ...] = ()
) -> Schema:
    """An object of C{properties}, all required but C{optional}; C{closed}: no other keys."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


HEX40: Final[Schema] = {"type": "string", "pattern": "^[0-9a-f]{40}$"}
HEX64: Final[Schema] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
DECIMAL: Final[Schema] = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?$",
    "description": "A decimal in a JSON string, exact (never a JSON number).",
}
SIGNED_DECIMAL: Final[Schema] = {
    "type": "string",
    "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
    "description": "A decimal in a JSON string, exact, with a '-' when negative.",
}
COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
NUMBER: Final[Schema] = {"type": "number"}
TEXT: Final[Schema] = {"type": "string"}
UNIX_MS: Final[Schema] = {
    "type": "integer",
    "description": "A time: integer milliseconds since the unix epoch (UTC).",
}
LEVEL: Final[Schema] = {
    "type": "array",
    "prefixItems": [DECIMAL, DECIMAL, {"type": "integer", "minimum": 1}],
    "minItems": 3,
    "maxItems": 3,
    "description": "[price, amount, orders] of one price level.",
}

SCHEMAS: Final[dict[str, Schema]] = {
    "Error": {
        **obj({"error": TEXT, "index": COUNT}, optional=("index",)),
        "description": "Every 4xx/5xx answer. `index` names the first bad order of a batch.",
    },
    "Index": obj(
        {"name": {"const": "bitfi"}, "endpoints": {"type": "array", "items": TEXT}, "openapi": TEXT}
    ),  # fmt: skip
    "Status": {
        **obj(
            {
                "node_id": HEX40,
                "network": TEXT,
                "pair": TEXT,
                "version": TEXT,
                "user_agent": TEXT,
                "p2p": obj(
                    {
                        "host": {
                            **TEXT,
                            "description": "`--host`; empty: every address of both families.",
                        },
                        "port": COUNT,
                        "listening": {
                            "type": "array",
                            "items": TEXT,
                            "description": "Every address the P2P listener binds, as "
                            "`host:port` (`0.0.0.0:3000`, `[::]:3000`).",
                        },
                        "tls": {"type": "boolean"},
                    }
                ),
                "peers": obj(
                    {
                        name: COUNT
                        for name in (
                            "inbound",
                            "outbound",
                            "handshaking",
                            "known_addresses",
                            "max_peers",
                            "outbound_target",
                            "dials",
                            "dial_failures",
                            "refused_inbound",
                            "refused_banned",
                            "protocol_violations",
                            "bans",
                        )
                    },
                    closed=False,
                ),  # fmt: skip
                "reachability": ref("Reachability"),
                "uptime_ms": {**COUNT, "description": "Milliseconds since the node started."},
                "api": nullable(
                    {
                        **obj({"url": TEXT, "dashboard": TEXT}),
                        "description": "Where the HTTP API listens, and its dashboard (the "
                        "same address, for browsers); null with `--no-api`.",
                    }
                ),
                "data_dir": {**TEXT, "description": "The node's data directory."},
                "mdns": nullable(ref("MDNSStatus")),
                "dht": nullable(ref("DHTStatus")),
                "events": COUNT,
                "authors": COUNT,
                "lamport": COUNT,
                "state_hash": HEX64,
                "settled_through": {
                    **COUNT,
                    "description": "Author-clock order: the Lamport time through which state "
                    "is settled (fair order: see `witnesses`).",
                },
                "settled_through_ms": nullable(
                    {
                        **UNIX_MS,
                        "description": "The settled point as a time: the fair time (fair "
                        "order) or the Lamport time, which follows the authors' clocks in "
                        "unix ms (author-clock order); null while nothing is settled.",
                    }
                ),
                "ordering": {
                    "enum": ["fair", "author"],
                    "description": "fair: by the witnesses' stamps; author: by author clocks.",
                },
                "witnesses": {
                    "anyOf": [ref("WitnessStatus"), {"type": "object", "maxProperties": 0}],
                    "description": "The fair order and its witnesses; {} without witnesses.",
                },
                "market": {"type": "object"},
                "gossip": {"type": "object"},
                "sync": nullable(ref("SyncStatus")),
                "markets": {
                    "type": "array",
                    "items": TEXT,
                    "description": "The markets the node carries, the first (`pair`) first; "
                    "the fields above of a market are the first's (`GET /markets` for each).",
                },
                "stored_markets": {
                    "type": "array",
                    "items": TEXT,
                    "description": "Every market with a journal in the data directory, in "
                    "the order they were added: those carried, and those dropped from the "
                    "options, whose history is kept (carry one again to load it).",
                },
            },
            closed=False,
        ),
        "description": "What the node is and how it is doing; more keys may come.",
    },
    "Reachability": {
        **obj(
            {
                "state": {
                    "enum": ["unknown", "public", "mapped", "outbound-only"],
                    "description": "Whether peers can dial this node: `public` (a peer "
                    "reached its listening port), `mapped` (through the port the router maps "
                    "to it), `outbound-only` (peers could not: it runs on the links it "
                    "dials), `unknown` (no peer has answered a dial-back yet).",
                },
                "address": nullable(
                    {**TEXT, "description": "The address a peer reached, `host:port`."}
                ),
                "observed": {
                    "type": "array",
                    "items": TEXT,
                    "description": "The addresses peers see this node's connections come "
                    "from (their `version`'s `seen_as`), the most said first.",
                },
                "checked_at": nullable(UNIX_MS),
                "checking": {"type": "boolean"},
                "reason": nullable(
                    {**TEXT, "description": "Why the last dial-back failed, if it did."}
                ),
                "dialbacks_answered": {
                    **COUNT,
                    "description": "Dial-backs this node ran for its peers that reached them.",
                },
                "nat": nullable(
                    {
                        "type": "object",
                        "description": "The router's port mapping of the P2P port (`--nat`): "
                        "`protocol` (`tcp`), `method` (`pcp`, "
                        "`natpmp`, `upnp` or null), `state` (`trying`, `mapped`, `refused`, "
                        "`lost`, `none`, `off`), `external_address`, `external_port`, "
                        "`internal_port`, `lease_s`, `expires_at` and `retry_at` (unix ms), "
                        "`error`; null with `--nat off`.",
                    }
                ),
                "nat_udp": nullable(
                    {
                        "type": "object",
                        "description": "The router's port mapping of the IPv4 DHT's UDP port, "
                        "as `nat` (`protocol` `udp`); null with `--nat off` or `--no-dht`.",
                    }
                ),
            },
            closed=False,
        ),
        "description": "Whether peers can reach this node, by the dial-back check.",
    },
    "SyncStatus": {
        **obj(
            {
                "state": {"enum": ["syncing", "synced", "waiting for peers"]},
                "events": {**COUNT, "description": "Events held (without gaps)."},
                "known": {
                    **COUNT,
                    "description": "Events known to exist: held, and beyond them what the "
                    "peers' last syncs said they hold.",
                },
                "behind": {**COUNT, "description": "known - events."},
                "rate": {**NUMBER, "description": "Events gained per second, lately."},
                "eta_ms": nullable({**COUNT, "description": "Milliseconds left at that rate."}),
            }
        ),
        "description": "How far the node is behind its peers, measured at the request.",
    },
    "WitnessStatus": {
        **obj(
            {
                "n": {"type": "integer", "minimum": 1, "description": "Witnesses named (2f + 1)."},
                "f": {**COUNT, "description": "Faulty witnesses the order tolerates."},
                "digest": {**HEX64, "description": "The set's digest, as `version` carries it."},
                "me": nullable(
                    {**COUNT, "description": "This node's place in the set; null: no witness."}
                ),
                "stamps": {**COUNT, "description": "Witness stamps held."},
                "stamps_signed": {**COUNT, "description": "Stamps this node signed."},
                "relisted": {
                    **COUNT,
                    "description": "Events this node, a witness, listed again in a later stamp "
                    "because their first receipt did not count.",
                },
                "settled_through_ms": nullable(
                    {**UNIX_MS, "description": "The settled point: a fair time, unix ms."}
                ),
                "final_through_ms": nullable(
                    {**UNIX_MS, "description": "The final point: a fair time, unix ms."}
                ),
                "settled_held_by": ref("SettledHeldBy"),
                "settled_events": {
                    **COUNT,
                    "description": "Events at the start of the log that are settled "
                    "(n - f witnesses' stamps held past them).",
                },
                "final_events": {
                    **COUNT,
                    "description": "Events at the start of the log that are final "
                    "(every witness's stamps held past them).",
                },
                "waiting_events": {**COUNT, "description": "Events waiting for a fair time."},
                "flagged": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[0-9a-f]{64}$"},
                    "additionalProperties": ref("WitnessFault"),
                    "description": "Witnesses proven faulty, by public key.",
                },
                "witness_revisions": {
                    **COUNT,
                    "description": "Times a flagged witness's stamps changed settled trades.",
                },
                "chains": {
                    "type": "array",
                    "items": ref("WitnessChain"),
                    "description": "One per witness, in the set's order.",
                },
            }
        ),
        "description": "The fair order (`GET /status`, `witnesses`); docs/consistency.rst.",
    },
    "SettledHeldBy": {
        **obj(
            {
                "by": {
                    "enum": ["chains", "receipt", "stamp", "event"],
                    "description": "chains: n - f witnesses' stamps are held only this far "
                    "(less the counting window); receipt: a witness's receipt that may yet "
                    "count; stamp: a stamp other witnesses hold and this node lacks; event: "
                    "an event with a fair time that this node lacks.",
                },
                "event": {**HEX64, "description": "The event (receipt, event)."},
                "witness": {**HEX40, "description": "The witness (receipt, stamp)."},
                "t": {**UNIX_MS, "description": "The receipt's time, unix ms."},
                "seq": {**COUNT, "description": "The stamp's seq."},
            },
            optional=("event", "witness", "t", "seq"),
        ),
        "description": "What holds the settled point where it is: a node whose settled point "
        "stalls shows why here.",
    },
    "WitnessChain": obj(
        {
            "node_id": HEX40,
            "seq": {**COUNT, "description": "Its stamps held without a gap."},
            "t": nullable({**UNIX_MS, "description": "Its last such stamp's time, unix ms."}),
            "waiting": {**COUNT, "description": "Its stamps held beyond a gap."},
            "flagged": nullable(ref("WitnessFault")),
            "lag_ms": nullable(
                {
                    "type": "integer",
                    "description": "This node's clock minus the witness's when its last stamp "
                    "arrived (delay included); null until one arrives, and for the node's own.",
                }
            ),
        }
    ),
    "WitnessFault": {
        "enum": ["equivocation", "broken_chain"],
        "description": "Why a witness is flagged: two stamps for one seq, or a stamp that "
        "does not follow its predecessor.",
    },
    "MDNSStatus": obj({"interface": TEXT, "instance": TEXT, "discovered": COUNT}, closed=False),
    "DHTStatus": obj(
        {
            "node_id": nullable(HEX40),
            "port": {**COUNT, "description": "The UDP port (of the first family running)."},
            "info_hash": HEX40,
            "routing_table_size": {**COUNT, "description": "Contacts of every family."},
            "announced_at": nullable(UNIX_MS),
            "peers_found": COUNT,
            "families": {
                "type": "object",
                "propertyNames": {"enum": ["ipv4", "ipv6"]},
                "additionalProperties": ref("DHTFamily"),
                "description": "The DHT of each address family running (BEP 32: IPv4 and "
                "IPv6 are two DHTs); a family the host lacks is absent.",
            },
        },
        closed=False,
    ),  # fmt: skip
    "DHTFamily": obj(
        {
            "host": {**TEXT, "description": "The address bound (0.0.0.0, ::, or --host)."},
            "port": COUNT,
            "routing_table_size": COUNT,
            "announced_at": nullable(UNIX_MS),
            "peers_found": COUNT,
        }
    ),
    "Discovery": obj({"mdns": nullable(ref("MDNSStatus")), "dht": nullable(ref("DHTStatus"))}),
    "Peer": obj(
        {
            "node_id": HEX40,
            "address": nullable(TEXT),
            "remote": TEXT,
            "family": {
                "enum": ["ipv4", "ipv6"],
                "description": "The address family of the link's connection.",
            },
            "direction": {"enum": ["inbound", "outbound"]},
            "connected_since": nullable(UNIX_MS),
            "rtt_ms": nullable(NUMBER),
            "source": nullable(TEXT),
            "user_agent": nullable(TEXT),
            "protocol_version": nullable({"type": "integer"}),
            "markets": {
                "type": "array",
                "items": TEXT,
                "description": "The markets (trading pairs) the peer carries, its pair first: "
                "those its version announced, or its pair alone (a version 3 peer).",
            },
            "shared_markets": {
                "type": "array",
                "items": TEXT,
                "description": "The markets both ends carry, in this node's order: those whose "
                "gossip the link carries. Empty: the link serves address exchange only.",
            },
            "tls": nullable(TEXT),
            "throttled": {**COUNT, "description": "How often reading paused for a rate limit."},
        },
        closed=False,
    ),
    "Disconnected": obj({"node_id": HEX40, "status": {"const": "disconnected"}}),
    "Ban": obj(
        {
            "address": TEXT,
            "node_id": nullable(HEX40),
            "reason": TEXT,
            "banned_at": UNIX_MS,
            "until": UNIX_MS,
        }
    ),  # fmt: skip
    "Trade": obj(
        {
            "id": HEX64,
            "price": DECIMAL,
            "amount": DECIMAL,
            "side": {"enum": list(SIDES), "description": "The taker's side."},
            "taker": HEX64,
            "maker": HEX64,
            "lamport": COUNT,
            "time": UNIX_MS,
            "fair_time": nullable(
                {
                    **UNIX_MS,
                    "description": "The taker's fair time, unix ms (networks with witnesses).",
                }
            ),
            "settled": {"type": "boolean"},
            "status": {
                "enum": ["tentative", "settled", "final"],
                "description": "final: every witness's stamps are held past it (fair order).",
            },
        }
    ),
    "Order": obj(
        {
            "id": HEX64,
            "side": {"enum": list(SIDES)},
            "type": {"enum": list(ORDER_TYPES)},
            "price": nullable(DECIMAL),
            "amount": DECIMAL,
            "remaining": DECIMAL,
            "filled": DECIMAL,
            "status": {"enum": ["open", "filled", "cancelled", "rejected", "pending"]},
            "reason": nullable(TEXT),
            "author": HEX64,
            "seq": {"type": "integer", "minimum": 1},
            "lamport": COUNT,
            "created_at": {**UNIX_MS, "description": "Its author's clock when signed."},
            "applied_at": nullable(
                {**UNIX_MS, "description": "When this node first applied it (recent orders)."}
            ),
            "fair_time": nullable({**UNIX_MS, "description": "From the witnesses' stamps."}),
            "settled": {"type": "boolean"},
            "trades": {"type": "array", "items": ref("Trade")},
        }
    ),
    "Orders": obj({"orders": {"type": "array", "items": ref("Order")}}),
    "Trades": obj({"trades": {"type": "array", "items": ref("Trade")}}),
    "Market": {
        **obj(
            {
                "market": {**TEXT, "description": "The pair, BASE/QUOTE."},
                "slug": {**TEXT, "description": "Its path segment, BASE-QUOTE."},
                "best_bid": nullable(DECIMAL),
                "best_ask": nullable(DECIMAL),
                "last": nullable({**DECIMAL, "description": "The last trade's price."}),
                "state_hash": HEX64,
                "events": COUNT,
                "trades": COUNT,
                "open_orders": COUNT,
                "ordering": {"enum": ["fair", "author"]},
                "witnesses_missing": {
                    "type": "array",
                    "items": HEX40,
                    "description": "Witnesses of the network last seen linked without this "
                    "market: they never stamp its events (every witness must carry every "
                    "market; with more than f of them, none settles).",
                },
            }
        ),
        "description": "One market the node carries (`GET /markets`).",
    },
    "Ticker": {
        **obj(
            {
                "pair": TEXT,
                "last": nullable({**DECIMAL, "description": "The last trade's price."}),
                "open": nullable({**DECIMAL, "description": "The first price in the window."}),
                "change": nullable({**SIGNED_DECIMAL, "description": "last - open."}),
                "change_pct": nullable(
                    {**SIGNED_DECIMAL, "description": "The change in % of open, to 0.01."}
                ),
                "high": nullable(DECIMAL),
                "low": nullable(DECIMAL),
                "volume": {**DECIMAL, "description": "Base amount traded in the window."},
                "quote_volume": {**DECIMAL, "description": "Quote amount (price x amount)."},
                "trades": {**COUNT, "description": "Trades in the window."},
                "best_bid": nullable(DECIMAL),
                "best_ask": nullable(DECIMAL),
                "spread": nullable({**SIGNED_DECIMAL, "description": "best_ask - best_bid."}),
                "mid": nullable({**DECIMAL, "description": "(best_bid + best_ask) / 2."}),
                "window_ms": {**COUNT, "description": "The window: 24 hours."},
                "at": {**UNIX_MS, "description": "When the figures were read."},
            }
        ),
        "description": "The market over the last 24 hours; a trade's time is its taker's "
        "(`time` in `GET /trades`).  The window's figures may be up to 1 s old; `last` "
        "and the book's are read at the request.",
    },
    "StreamTicket": obj(
        {
            "ticket": TEXT,
            "expires_at": UNIX_MS,
            "expires_in_ms": {**COUNT, "description": "The ticket's lifetime."},
        }
    ),
    "Book": obj(
        {"bids": {"type": "array", "items": LEVEL}, "asks": {"type": "array", "items": LEVEL}}
    ),
    "OrderRequest": {
        **obj(
            {
                "side": {"enum": list(SIDES)},
                "price": nullable(DECIMAL),
                "amount": DECIMAL,
                "type": {"enum": list(ORDER_TYPES), "default": "limit"},
            },
            optional=("price", "type"),
        ),  # fmt: skip
        "description": "`price` is required except for a market order, which takes none.",
    },
    "BatchRequest": obj(
        {
            "orders": {
                "type": "array",
                "items": ref("OrderRequest"),
                "minItems": 1,
                "maxItems": MAX_BATCH,
            }
        }
    ),  # fmt: skip
    "SignedEvent": {
        **obj(
            {
                "text": {
                    **TEXT,
                    "description": "The event's text: `bitfi1 <network> <pair> <author> <seq> "
                    "<lamport> <ts> order <side> <type> <price|-> <amount>` or `... cancel "
                    "<order id>` (docs/protocol.rst).",
                },
                "sig": {
                    **TEXT,
                    "description": "Its author's Ed25519 signature over the text (128 hex), "
                    "or a batch signature.",
                },
            }
        ),
        "description": "An event signed by its author's own key.",
    },
    "EventBatchRequest": obj(
        {
            "events": {
                "type": "array",
                "items": ref("SignedEvent"),
                "minItems": 1,
                "maxItems": MAX_BATCH,
            }
        }
    ),
    "EventTaken": obj(
        {
            "id": HEX64,
            "author": HEX64,
            "seq": {"type": "integer", "minimum": 1},
            "kind": {"enum": ["order", "cancel"]},
            "status": {
                "enum": ["applied", "pending"],
                "description": "pending: it waits for an earlier event of its author.",
            },
            "order": nullable(
                {
                    **ref("Order"),
                    "description": "The order it is, or the order it cancels (null if this "
                    "node does not hold that order).",
                }
            ),
        }
    ),
    "EventsTaken": obj({"events": {"type": "array", "items": ref("EventTaken")}}),
    "KeyInfo": {
        **obj(
            {
                "key": HEX64,
                "network": TEXT,
                "pair": TEXT,
                "next_seq": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "The seq the key's next event must carry, as this node "
                    "sees the key's events.",
                },
                "lamport": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "A Lamport time above every one this node holds: a new "
                    "event's should be at least this (and above the key's last).",
                },
                "events": {**COUNT, "description": "The highest seq of the key held."},
            }
        ),
        "description": "What a client signing for this key needs to write its next event.  "
        "A client signs seq = max(next_seq, its own last seq + 1) and lamport = max(lamport, "
        "its clock in unix ms, its last lamport + 1), and keeps its recent events to send "
        "again to a node that lacks them (a seq signed twice is an equivocation).",
    },
    "ConnectRequest": obj(
        {"address": {"type": "string", "description": "host:port or NODEID@host:port"}},
        closed=False,
    ),  # fmt: skip
    "PeerEvent": obj(
        {
            "event": {"enum": ["joined", "left"]},
            "node_id": HEX40,
            "address": nullable(TEXT),
            "direction": {"enum": ["inbound", "outbound"]},
        }
    ),  # fmt: skip
    "StreamStatus": obj(
        {"node_id": HEX40, "market": TEXT, "peers": COUNT, "events": COUNT, "state_hash": HEX64}
    ),
}

PARAMETERS: Final[dict[str, Schema]] = {
    "limit": {"name": "limit", "in": "query", "required": False,
              "description": f"At most this many items (1 to {MAX_LIMIT}).",
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
    "offset": {"name": "offset", "in": "query", "required": False,
               "description": "Skip this many items first.",
               "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
    "node_id": {"name": "node_id", "in": "path", "required": True,
                "description": "A peer's node id, 40 hex digits.", "schema": TEXT},
    "address": {"name": "address", "in": "path", "required": True,
                "description": "An IP address (percent-encoded).", "schema": TEXT},
    "order_id": {"name": "order_id", "in": "path", "required": True,
                 "description": "An order id, 64 hex digits.", "schema": TEXT},
    "key": {"name": "key", "in": "path", "required": True,
            "description": "An author's Ed25519 public key, 64 hex digits.", "schema": TEXT},
    "market": {"name": "market", "in": "path", "required": True,
               "description": "A market the node carries, as BASE-QUOTE (BTC-USD; any case) "
                              "or percent-encoded BASE/QUOTE (BTC%2FUSD).", "schema": TEXT},
}  # fmt: skip

HEADERS: Final[dict[str, Schema]] = {
    "Link": {"description": 'The next page, `<path?query>; rel="next"`, when more items follow.',
             "schema": TEXT},
    "X-Total-Count": {"description": "How many items the whole list holds.",
                      "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "Location": {"description": "The new order's path.", "schema": TEXT},
    "Allow": {"description": "The methods the path answers.", "schema": TEXT},
    "WWW-Authenticate": {"description": 'The bearer challenge, `Bearer realm="bitfi"`.',
                         "schema": TEXT},
}  # fmt: skip


def error(description: str) -> Schema:
    """An error answer."""
    return {"description": description,
            "content": {"application/json": {"schema": ref("Error")}}}  # fmt: skip


RESPONSES: Final[dict[str, Schema]] = {
    "BadRequest": error("A bad parameter or body; the message names it."),
    "Unauthorized": {
        **error("The API has a token and the request did not carry it."),
        "headers": {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    },
    "NotFound": error("No such resource, or any unknown path."),
    "MethodNotAllowed": {
        **error("A method the path does not answer (any path)."),
        "headers": {"Allow": {"$ref": "#/components/headers/Allow"}},
    },
    "Unavailable": error("The node cannot do this now (its market is not running)."),
}


def answer(schema: Schema, description: str = "OK", headers: tuple[str, ...] = ()) -> Schema:
    """A JSON answer of C{schema}, with C{headers}."""
    out: Schema = {"description": description,
                   "content": {"application/json": {"schema": schema}}}  # fmt: skip
    if headers:
        out["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return out


def operation(
    summary: str,
    responses: dict[str, Schema],
    *,
    parameters: tuple[str, ...] = (),
    body: str | None = None,
    errors: tuple[str, ...] = (),
    public: bool = False,
    extra: Schema | None = None,
) -> Schema:
    """
    One operation: C{responses} by status, the shared C{errors} answers
    (``400``, ``404``, ``503``...), and ``401`` unless C{public}.
    """
    shared = {"400": "BadRequest", "401": "Unauthorized", "404": "NotFound",
              "503": "Unavailable"}  # fmt: skip
    all_responses = dict(responses)
    for status in (*errors, *(() if public else ("401",))):
        all_responses[status] = {"$ref": f"#/components/responses/{shared[status]}"}
    out: Schema = {"summary": summary, "responses": all_responses}
    if parameters:
        out["parameters"] = [{"$ref": f"#/components/parameters/{name}"} for name in parameters]
    if body is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": ref(body)}}}  # fmt: skip
    if public:
        out["security"] = [{}]
    out.update(extra or {})
    return out


STREAM_DESCRIPTION: Final = f"""\
Server-Sent Events (`text/event-stream`): each event is `event: <type>`,
then `data: <one line of JSON>`, then a blank line; lines opening with `:`
are comments.  The types (all unless `types` picks some):

- `book`: {{"bids": [[price, amount, orders], ...], "asks": [...]}}, depth
  {BOOK_DEPTH}; once at connect, then on change, at most 10 a second.
- `trade`: a trade as in `GET /trades`; when it appears, and again when it
  settles (`"status": "settled"`).
- `order`: an order as in `GET /orders/{{order_id}}`, for this node's own
  orders when created or changed (filled, cancelled, settled).
- `peer`: {{"event": "joined" | "left", "node_id", "address", "direction"}}.
- `status`: {{"node_id", "market", "peers", "events", "state_hash"}}, the
  market's events and state hash; once at connect, then every
  {STATUS_INTERVAL:g} s (the keepalive).

A stream is one market's: `GET /stream` the first market's, `GET
/markets/{{market}}/stream` any carried market's (`book`, `trade`, `order`
and `status` of that market; `peer` events are the node's).  At most
{MAX_CLIENTS} clients at once over every market (503 beyond); a client that does not
read while {MAX_BACKLOG} events wait for it is disconnected.  The data of
each type follows the schema named under `x-sse-events`."""

EVENTS_DESCRIPTION: Final = """\
A user who holds their own Ed25519 key signs their orders and cancels
themselves (the `bitfi` CLI does, with `--key`) and sends them here: the
node checks each as it checks an event from a peer (form, network, pair,
signature), and against the key's events it holds (a seq already taken by
another event, a seq more than 100 past the key's next, a Lamport time not
above the key's previous: 400), then journals, applies and relays it
unchanged.  It cannot alter, forge or cancel the key's events: only the
key's own signed cancel cancels its order.  `GET /keys/{key}` gives the
next seq and a Lamport time to use.  An event held already is answered as
taken.  Events of this node's own key are refused (`POST /orders` places
those)."""

TICKET_DESCRIPTION: Final = f"""\
A browser's `EventSource` cannot send an `Authorization` header.  With the
token, ask for a ticket here, then open `GET /stream?ticket=<ticket>` (or
`GET /markets/{{market}}/stream?ticket=<ticket>`) without the header: a
ticket is random, good for one stream of any market, and expires
{TICKET_LIFETIME:g} s after it is issued, so the token never appears in a
URL.  A spent, unknown or expired ticket is answered 401.  (A node without
a token issues tickets too, and ignores them.)"""

DESCRIPTION: Final = """\
The HTTP API of a bitfi node.  Every answer but `GET /stream` is JSON;
every 4xx/5xx answer is `{"error": "..."}`.  Any unknown path answers 404,
and a method a path does not answer 405 with an `Allow` header; `HEAD` is
answered as `GET`.  Prices and amounts are decimals in JSON strings.

Times: every time is an integer of milliseconds since the unix epoch
(UTC), and every duration an integer of milliseconds under a name ending
`_ms` (`uptime_ms`, `rtt_ms`); Lamport times (`lamport`, `settled_through`)
are logical clocks, not times.

Lists (`/peers`, `/peers/banned`, `/orders`, `/trades`) stay JSON arrays
(or the arrays of `{"orders": [...]}` and `{"trades": [...]}`) and take
`limit` and `offset`; when more items follow, the answer has a
`Link: <...>; rel="next"` header, and `X-Total-Count` where the total is
known.

When the node has an API token (always when it listens beyond loopback),
every request but `GET /openapi.json` and the dashboard's files must carry
`Authorization: Bearer <token>`, or is answered 401.

Limits (docs/operations.rst, "The HTTP API under overload"): a request body
over 64 KiB is answered 413 before it is read; past `--api-max-connections`
open connections (256), a new one is answered 503 with `Retry-After`; a
connection idle for `--api-idle-timeout` seconds (60), or that takes longer
to send one request, is closed.  While the node's journal cannot be written
(a full disk), orders and cancels are answered 503 with the cause."""


RATE_LIMITED: Final = {
    **error(
        "A key's events came faster than peers relay one author's: none was taken; "
        "`Retry-After` says in how many seconds to try again."
    ),
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
}


MARKETS_DESCRIPTION: Final = """\
A node carries one or more markets.  Each market's routes are under
`/markets/{market}/` (`/markets/ETH-USD/orders`, `/markets/ETH-USD/book`,
...), `{market}` being BASE-QUOTE in any case (or BASE%2FUSD); a market the
node does not carry is answered 404, naming those it carries.  Today's
paths without the prefix (`/orders`, `/book`, `/ticker`, `/events`,
`/keys/...`, `/trades`, `/stream`) are the first market's."""

MARKET_ROUTES: Final = (
    "/orders",
    "/orders/batch",
    "/orders/{order_id}",
    "/book",
    "/ticker",
    "/events",
    "/events/batch",
    "/keys/{key}",
    "/keys/{key}/orders",
    "/keys/{key}/trades",
    "/trades",
    "/stream",
)
"""The routes of one market: each served at ``/markets/{market}`` + route too."""


def market_path(item: Schema) -> Schema:
    """
    The path item of a market route under ``/markets/{market}``: C{item}'s
    operations, with the ``market`` parameter, each also answering 404 (a
    market the node does not carry) and 400 (a market that does not parse).
    """
    out = copy.deepcopy(item)
    out["parameters"] = [{"$ref": "#/components/parameters/market"}, *out.get("parameters", [])]
    for method, operation_ in out.items():
        if method == "parameters":
            continue
        operation_["summary"] += " (of one market)"
        for status, name in (("400", "BadRequest"), ("404", "NotFound")):
            operation_["responses"].setdefault(status, {"$ref": f"#/components/responses/{name}"})
    return out


ORDERS_LIST: Final[Schema] = {
    "parameters": [
        {"$ref": "#/components/parameters/limit"},
        {"$ref": "#/components/parameters/offset"},
        {"name": "state", "in": "query", "required": False,
         "schema": {"enum": list(ORDER_STATES), "default": "open"}},
    ],
    "description": f"`limit` defaults to {ORDERS_LIMIT}.",
}  # fmt: skip
"""The query of a list of orders (``/orders``, ``/keys/{key}/orders``)."""


def build() -> Schema:
    """The OpenAPI document, fresh."""
    list_params = ("limit", "offset")
    paths: dict[str, Schema] = {
        "/": {"get": operation(
            "Index of the API (JSON unless the request accepts text/html)",
            {"200": answer(ref("Index"))})},
        "/api": {"get": operation("Index of the API", {"200": answer(ref("Index"))})},
        "/openapi.json": {"get": operation(
            "This document", {"200": answer({"type": "object"})}, public=True)},
        "/status": {"get": operation("The node's status", {"200": answer(ref("Status"))},
                                     errors=("503",))},
        "/discovery": {"get": operation(
            "The discovery services (null when off)", {"200": answer(ref("Discovery"))})},
        "/peers": {
            "get": operation(
                "Live peer links, oldest first",
                {"200": answer({"type": "array", "items": ref("Peer")},
                               headers=("Link", "X-Total-Count"))},
                parameters=list_params, errors=("400",)),
            "post": operation(
                "Dial a peer now; answers once linked",
                {"200": answer(ref("Peer")),
                 "403": error("The address is banned."),
                 "502": error("The connection failed, or the node refused the link.")},
                body="ConnectRequest", errors=("400",)),
        },
        "/peers/{node_id}": {
            "parameters": [{"$ref": "#/components/parameters/node_id"}],
            "get": operation("One live peer link", {"200": answer(ref("Peer"))},
                             errors=("404",)),
            "delete": operation(
                "Close the link to a peer and rest its addresses",
                {"200": answer(ref("Disconnected"))}, errors=("400", "404")),
        },
        "/peers/banned": {"get": operation(
            "The bans in force, newest first",
            {"200": answer({"type": "array", "items": ref("Ban")},
                           headers=("Link", "X-Total-Count"))},
            parameters=list_params, errors=("400",))},
        "/peers/banned/{address}": {
            "parameters": [{"$ref": "#/components/parameters/address"}],
            "delete": operation("Lift a ban", {"200": answer(ref("Ban"))},
                                errors=("400", "404")),
        },
        "/orders": {
            "get": operation(
                "This node's own orders, newest first",
                {"200": answer(ref("Orders"), headers=("Link",))},
                errors=("400", "503"),
                extra=ORDERS_LIST),
            "post": operation(
                "Place an order; answers once it is journaled",
                {"201": answer(ref("Order"), "Created", headers=("Location",))},
                body="OrderRequest", errors=("400", "503")),
        },
        "/orders/batch": {"post": operation(
            "Place several orders, all or none, in one group commit",
            {"201": answer(ref("Orders"), "Created")},
            body="BatchRequest", errors=("400", "503"))},
        "/events": {"post": operation(
            "Take an event its author signed: checked as a peer's, then journaled, applied "
            "and relayed unchanged; answers once journaled",
            {"201": answer(ref("EventTaken"), "Created"), "429": RATE_LIMITED},
            body="SignedEvent", errors=("400", "503"),
            extra={"description": EVENTS_DESCRIPTION})},
        "/events/batch": {"post": operation(
            "Take several events their authors signed, all or none",
            {"201": answer(ref("EventsTaken"), "Created"), "429": RATE_LIMITED},
            body="EventBatchRequest", errors=("400", "503"))},
        "/keys/{key}": {
            "parameters": [{"$ref": "#/components/parameters/key"}],
            "get": operation("What a client signing for this key needs",
                             {"200": answer(ref("KeyInfo"))}, errors=("400", "503"))},
        "/keys/{key}/orders": {
            "parameters": [{"$ref": "#/components/parameters/key"}],
            "get": operation(
                "The key's orders this node holds, newest first",
                {"200": answer(ref("Orders"), headers=("Link",))},
                errors=("400", "503"),
                extra=ORDERS_LIST)},
        "/keys/{key}/trades": {
            "parameters": [{"$ref": "#/components/parameters/key"}],
            "get": operation(
                "The trades of the key's orders (taker or maker), newest first",
                {"200": answer(ref("Trades"), headers=("Link",))},
                parameters=list_params, errors=("400", "503"),
                extra={"description": f"`limit` defaults to {DEFAULT_LIMIT}."})},
        "/orders/{order_id}": {
            "parameters": [{"$ref": "#/components/parameters/order_id"}],
            "get": operation("Any order this node holds", {"200": answer(ref("Order"))},
                             errors=("400", "404", "503")),
            "delete": operation(
                "Cancel one of this node's orders; answers once journaled",
                {"200": answer(ref("Order")),
                 "403": error("The order was not placed by this node.")},
                errors=("400", "404", "503")),
        },
        "/book": {"get": operation(
            "The aggregated book, best levels first", {"200": answer(ref("Book"))},
            errors=("400", "503"),
            extra={"parameters": [{"name": "depth", "in": "query", "required": False,
                                   "schema": {"type": "integer", "minimum": 1,
                                              "maximum": MAX_LIMIT, "default": 20}}]})},
        "/ticker": {"get": operation(
            "The market over the last 24 hours: last price, change, high, low, volume",
            {"200": answer(ref("Ticker"))}, errors=("503",))},
        "/trades": {"get": operation(
            "The trades, newest first",
            {"200": answer(ref("Trades"), headers=("Link", "X-Total-Count"))},
            parameters=list_params, errors=("400", "503"),
            extra={"description": f"`limit` defaults to {DEFAULT_LIMIT}."})},
        "/stream": {"get": operation(
            "The live stream (Server-Sent Events)",
            {"200": {"description": "The event stream.",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            errors=("400", "503"),
            extra={
                "description": STREAM_DESCRIPTION,
                "parameters": [{
                    "name": "types", "in": "query", "required": False, "style": "form",
                    "explode": False,
                    "description": "Comma-separated event types to receive (all by default).",
                    "schema": {"type": "array", "items": {"enum": list(STREAM_TYPES)}},
                }],
                "x-sse-events": {
                    "book": ref("Book"), "trade": ref("Trade"), "order": ref("Order"),
                    "peer": ref("PeerEvent"), "status": ref("StreamStatus"),
                },
            })},
        "/stream/ticket": {"post": operation(
            "A ticket for one GET /stream (for clients that cannot send the token)",
            {"201": answer(ref("StreamTicket"))},
            extra={"description": TICKET_DESCRIPTION})},
        "/metrics": {"get": operation(
            "The node's metrics in the Prometheus text format",
            {"200": {"description": "Every metric (``bitfi_*``), read at the request; see "
                                    "docs/operations.rst.",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
            errors=("404",))},
        "/static/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "description": "A file of the dashboard (index.html, app.js, "
                                           "style.css).",
                            "schema": {"type": "string"}}],
            "get": operation(
                "One file of the web dashboard (public; ``GET /`` from a browser is its page)",
                {"200": {"description": "The file.",
                         "content": {"text/html": {"schema": {"type": "string"}},
                                     "text/css": {"schema": {"type": "string"}},
                                     "text/javascript": {"schema": {"type": "string"}}}}},
                errors=("404",), public=True)},
    }  # fmt: skip
    paths["/markets"] = {"get": operation(
        "The markets this node carries, the first first (today's paths are its)",
        {"200": answer({"type": "array", "items": ref("Market")})},
        errors=("503",), extra={"description": MARKETS_DESCRIPTION})}  # fmt: skip
    for route in MARKET_ROUTES:
        paths[f"/markets/{{market}}{route}"] = market_path(paths[route])
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "bitfi node API", "version": __version__, "description": DESCRIPTION},
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "responses": RESPONSES,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The node's API token (--api-token or api.token).",
                }
            },  # fmt: skip
        },
    }


_DOCUMENT: Final = build()


def document() -> Schema:
    """The OpenAPI document (a copy: callers may change it)."""
    return copy.deepcopy(_DOCUMENT)
