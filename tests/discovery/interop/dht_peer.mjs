// A bittorrent-dht (webtorrent) node for bitfi's DHT interop test.
//
// Usage: node dht_peer.mjs <node_modules dir> <bitfi DHT port> <info-hash hex> <p2p port>
//
// Listens on 127.0.0.1 (no public bootstrap routers: bootstrap is false),
// adds bitfi's node, announces <p2p port> under the info-hash, then looks
// the info-hash up every second.  Writes one JSON object per line to
// stdout: {"event": "listening", "port": n}, {"event": "announced",
// "error": null | text}, {"event": "peer", "host": h, "port": n}.
// Exits when stdin closes or after 60 seconds, whichever comes first.

import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const [modules, bitfiPort, infoHash, p2pPort] = process.argv.slice(2)
const { default: DHT } = await import(
  pathToFileURL(join(modules, 'bittorrent-dht', 'index.js')).href
)

function say (message) {
  process.stdout.write(JSON.stringify(message) + '\n')
}

const dht = new DHT({ bootstrap: false })
const seen = new Set()
let timer = null

function stop () {
  if (timer) clearInterval(timer)
  dht.destroy(() => process.exit(0))
}

dht.on('error', (err) => say({ event: 'error', error: String(err) }))
dht.on('warning', (err) => say({ event: 'warning', error: String(err) }))
dht.on('peer', (peer, hash) => {
  const key = `${peer.host}:${peer.port}`
  if (hash.toString('hex') === infoHash && !seen.has(key)) {
    seen.add(key)
    say({ event: 'peer', host: peer.host, port: peer.port })
  }
})

dht.listen(0, '127.0.0.1', () => {
  say({ event: 'listening', port: dht.address().port })
  dht.addNode({ host: '127.0.0.1', port: Number(bitfiPort) })
  // Give the ping to bitfi a moment to put it in the routing table.
  setTimeout(() => {
    dht.announce(infoHash, Number(p2pPort), (err) => {
      say({ event: 'announced', error: err ? String(err) : null })
    })
    timer = setInterval(() => dht.lookup(infoHash), 1000)
  }, 500)
})

process.stdin.on('end', stop)
process.stdin.resume()
setTimeout(stop, 60000)
