// Records more hypercore replication sessions between real JS peers, through
// a TCP proxy that logs every read in each direction (the format of
// session-3-blocks.json, see README.md).  Fixed static keys, and ephemeral
// keys from the seeds E1, E2, ... in the order connections make them.
//
//   node capture.mjs OUT_DIR        (inside a folder where the packages of
//                                    tests/interop/jsenv.py's "hyperwire" env are installed)
import net from 'net'
import fs from 'fs'
import os from 'os'
import path from 'path'
import b4a from 'b4a'
import sodium from 'sodium-universal'
import curve from 'noise-curve-ed'
import crypto from 'hypercore-crypto'
import Hypercore from 'hypercore'
import Corestore from 'corestore'
import NoiseSecretStream from '@hyperswarm/secret-stream'

const OUT = process.argv[2] || '.'
let eph = 0
const origGen = curve.generateKeyPair
curve.generateKeyPair = function (priv) {
  if (priv) return origGen(priv)
  eph++
  const pk = b4a.alloc(32)
  const sk = b4a.alloc(64)
  sodium.crypto_sign_seed_keypair(pk, sk, b4a.alloc(32, 0xE0 + eph))
  return { publicKey: pk, secretKey: sk }
}
const hex = (b) => b4a.toString(b, 'hex')
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hc-capture-'))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const INIT_KP = NoiseSecretStream.keyPair(b4a.alloc(32, 0xA1))
const RESP_KP = NoiseSecretStream.keyPair(b4a.alloc(32, 0xB1))

// responder(opts) and initiator(opts) return replication streams
async function record (name, responder, initiator, body, extra = {}) {
  eph = 0
  const log = []
  let serverSide = null
  const server = net.createServer((sock) => {
    serverSide = responder({ keyPair: RESP_KP, keepAlive: false })
    sock.pipe(serverSide).pipe(sock)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const proxy = net.createServer((c) => {
    const up = net.connect(server.address().port, '127.0.0.1')
    c.on('data', (d) => { log.push({ dir: 'I->R', hex: hex(d) }); up.write(d) })
    up.on('data', (d) => { log.push({ dir: 'R->I', hex: hex(d) }); c.write(d) })
    c.on('end', () => up.end()); up.on('end', () => c.end())
    c.on('error', () => {}); up.on('error', () => {})
  })
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve))
  const sock = net.connect(proxy.address().port, '127.0.0.1')
  const stream = initiator({ keyPair: INIT_KP, keepAlive: false })
  sock.pipe(stream).pipe(sock)
  const result = await body()
  await sleep(300)
  const ns = stream.noiseStream
  const out = {
    name,
    ...extra,
    ...result,
    initiatorStaticSeed: 'a1'.repeat(32),
    responderStaticSeed: 'b1'.repeat(32),
    initiatorStaticPk: hex(INIT_KP.publicKey),
    responderStaticPk: hex(RESP_KP.publicKey),
    ephemeralSeeds: 'initiator e = e1*32, responder e = e2*32 (call order)',
    handshakeHash: hex(ns.handshakeHash),
    initiatorTx: hex(ns._encrypt.key),
    initiatorRx: hex(ns._decrypt.key),
    wire: log
  }
  fs.writeFileSync(path.join(OUT, name + '.json'), JSON.stringify(out, null, 1) + '\n')
  console.log(name, 'frames', log.length)
  sock.destroy(); serverSide.destroy(); proxy.close(); server.close()
}

function blocksOf (core, n) {
  const all = []
  for (let i = 0; i < n; i++) all.push(core.get(i).then((b) => b4a.toString(b)))
  return Promise.all(all)
}

async function live () {
  const w = new Hypercore(path.join(tmp, 'live-w'), { keyPair: crypto.keyPair(b4a.alloc(32, 2)) })
  await w.ready()
  await w.append([b4a.from('live-0'), b4a.from('live-1')])
  const r = new Hypercore(path.join(tmp, 'live-r'), w.key)
  await r.ready()
  await record('session-live', (o) => w.replicate(false, o), (o) => r.replicate(true, o), async () => {
    await blocksOf(r, 2)
    for (let i = 2; i < 4; i++) {
      await sleep(100)
      await w.append(b4a.from('live-' + i))
      while (r.length <= i) await new Promise((resolve) => r.once('append', resolve))
    }
    return { blocks: await blocksOf(r, 4) }
  }, { coreKey: hex(w.key), discoveryKey: hex(w.discoveryKey), writerSeed: '02'.repeat(32) })
  await r.close(); await w.close()
}

async function truncate () {
  const w = new Hypercore(path.join(tmp, 'trunc-w'), { keyPair: crypto.keyPair(b4a.alloc(32, 3)) })
  await w.ready()
  await w.append(['a0', 'a1', 'a2', 'a3'].map((s) => b4a.from(s)))
  const r = new Hypercore(path.join(tmp, 'trunc-r'), w.key)
  await r.ready()
  await record('session-truncate', (o) => w.replicate(false, o), (o) => r.replicate(true, o), async () => {
    await blocksOf(r, 4)
    await sleep(100)
    await w.truncate(2)
    await w.append([b4a.from('b2'), b4a.from('b3'), b4a.from('b4')])
    while (r.fork !== w.fork || r.length !== 5) {
      await new Promise((resolve) => { r.once('truncate', resolve); r.once('append', resolve) })
    }
    return { fork: r.fork, blocks: await blocksOf(r, 5) }
  }, { coreKey: hex(w.key), discoveryKey: hex(w.discoveryKey), writerSeed: '03'.repeat(32) })
  await r.close(); await w.close()
}

async function multi () {
  const ws = new Corestore(path.join(tmp, 'multi-w'))
  const a = ws.get({ keyPair: crypto.keyPair(b4a.alloc(32, 4)) })
  const b = ws.get({ keyPair: crypto.keyPair(b4a.alloc(32, 5)) })
  await a.ready(); await b.ready()
  await a.append([b4a.from('a-0'), b4a.from('a-1')])
  await b.append([b4a.from('b-0'), b4a.from('b-1'), b4a.from('b-2')])
  const rs = new Corestore(path.join(tmp, 'multi-r'))
  const ra = rs.get({ key: a.key })
  const rb = rs.get({ key: b.key })
  await ra.ready(); await rb.ready()
  await record('session-two-cores', (o) => ws.replicate(false, o), (o) => rs.replicate(true, o), async () => {
    return { blocks: [await blocksOf(ra, 2), await blocksOf(rb, 3)] }
  }, {
    coreKeys: [hex(a.key), hex(b.key)],
    discoveryKeys: [hex(a.discoveryKey), hex(b.discoveryKey)],
    writerSeeds: ['04'.repeat(32), '05'.repeat(32)]
  })
  await rs.close(); await ws.close()
}

async function sparse () {
  const w = new Hypercore(path.join(tmp, 'sparse-w'), { keyPair: crypto.keyPair(b4a.alloc(32, 6)) })
  await w.ready()
  const values = []
  for (let i = 0; i < 10; i++) values.push(b4a.from('s-' + i))
  await w.append(values)
  // the sparse peer downloads blocks 4..7 from the writer, then only it is reachable
  const s = new Hypercore(path.join(tmp, 'sparse-s'), w.key)
  await s.ready()
  const s1 = w.replicate(false, { keepAlive: false })
  const s2 = s.replicate(true, { keepAlive: false })
  s1.pipe(s2).pipe(s1)
  await s.download({ start: 4, end: 8 }).done()
  s1.destroy(); s2.destroy()
  await sleep(100)
  const r = new Hypercore(path.join(tmp, 'sparse-r'), w.key)
  await r.ready()
  await record('session-sparse', (o) => s.replicate(false, o), (o) => r.replicate(true, o), async () => {
    return { held: [4, 8], blocks: [await r.get(5).then(String), await r.get(6).then(String)] }
  }, { coreKey: hex(w.key), discoveryKey: hex(w.discoveryKey), writerSeed: '06'.repeat(32) })
  await r.close(); await s.close(); await w.close()
}

function dhVectors () {
  const out = []
  for (const [a, b] of [[0xA1, 0xB1], [0xE1, 0xE2], [0x01, 0xFF]]) {
    const ka = curve.generateKeyPair(b4a.alloc(64, a))
    const kb = curve.generateKeyPair(b4a.alloc(64, b))
    out.push({ seed: hex(b4a.alloc(32, a)), remotePublicKey: hex(kb.publicKey), shared: hex(curve.dh(kb.publicKey, ka)) })
  }
  fs.writeFileSync(path.join(OUT, 'dh.json'), JSON.stringify(out, null, 1) + '\n')
}

dhVectors()
await live()
await truncate()
await multi()
await sparse()
process.exit(0)
