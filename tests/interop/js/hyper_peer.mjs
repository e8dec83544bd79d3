// A real JavaScript Hypercore peer (hypercore 11, corestore 7, coremachine
// 1.1.0) driven over stdin/stdout, one JSON object per line, for the
// interop tests of tests/interop/test_hyper_js.py.  Every command has an
// `id`; the answer is {id, ok: true, ...} or {id, ok: false, error}.
//
//   {op: "core", name, seed?, key?, store?}   open a core (writer from a seed,
//        replica from a key; `store`: inside a Corestore of that name)
//   {op: "listen", cores: [names], path?} TCP server replicating those cores
//                                        (on a Unix socket at path if given)
//        (responder), answers {port}
//   {op: "connect", port, cores: [names]} replicate with a TCP server (initiator)
//   {op: "append", name, blocks: [hex]}   one append of these blocks
//   {op: "truncate", name, length}
//   {op: "wait", name, length, fork?}    until the core is at that length (and
//        fork) and holds every block
//   {op: "info", name}                   {length, fork, contiguous, key}
//   {op: "get", name, index}             {value: hex}
//   {op: "download", name, start, end}   fetch that range (a sparse replica)
//   {op: "audit", name}                  core.core.audit() result
//   {op: "machine", name, action?, value?}  the README quick-start Coremachine on
//        the core (reopened each time: JS's machine does not follow appends);
//        with `action`, run it; answers {state, context}
//   {op: "idle", name}                    the core stops downloading (closes idle channels)
//   {op: "disconnect"}                   destroy every replication stream
import Hypercore from 'hypercore'
import Corestore from 'corestore'
import crypto from 'hypercore-crypto'
import { createMachine, Coremachine } from 'coremachine'
import { once } from 'events'
import net from 'net'
import fs from 'fs'
import os from 'os'
import path from 'path'
import readline from 'readline'

// the folder for its stores: given by the test (which removes it), else a new one
const dir = process.argv[2] || fs.mkdtempSync(path.join(os.tmpdir(), 'hyper-peer-'))
const cores = new Map()
const stores = new Map()
const streams = new Set()

const definition = createMachine({
  initial: 'idle',
  context: { running: false, counter: 0 },
  states: {
    idle: { on: { START: { target: 'running', action: (ctx, n) => { ctx.running = true; ctx.counter = n } } } },
    running: {
      on: {
        INCREMENT: { target: 'running', action: (ctx) => { ctx.counter++ } },
        STOP: { target: 'idle', action: (ctx, n) => { ctx.running = false; if (n !== undefined) ctx.counter = n } }
      }
    }
  }
})

function store (name) {
  if (!stores.has(name)) stores.set(name, new Corestore(path.join(dir, 'store-' + name)))
  return stores.get(name)
}

async function openCore ({ name, seed, key, store: storeName, json }) {
  const opts = {}
  if (json) opts.valueEncoding = 'json'
  let core
  if (storeName) {
    const s = store(storeName)
    core = seed ? s.get({ keyPair: crypto.keyPair(Buffer.from(seed, 'hex')), ...opts })
      : s.get({ key: Buffer.from(key, 'hex'), ...opts })
  } else {
    const where = path.join(dir, 'core-' + name)
    core = seed ? new Hypercore(where, { keyPair: crypto.keyPair(Buffer.from(seed, 'hex')), ...opts })
      : new Hypercore(where, Buffer.from(key, 'hex'), opts)
  }
  await core.ready()
  cores.set(name, core)
  return { key: core.key.toString('hex'), discoveryKey: core.discoveryKey.toString('hex') }
}

// One replication stream for the named cores: a Corestore's, or the first
// core's with the others attached to the same stream.
function replicationStream (names, isInitiator) {
  const first = cores.get(names[0])
  const storeName = [...stores.keys()].find((s) => [...names].every((n) => coreStore(n) === s))
  let stream
  if (storeName) {
    stream = stores.get(storeName).replicate(isInitiator)
  } else {
    stream = first.replicate(isInitiator)
    for (const n of names.slice(1)) cores.get(n).replicate(stream)
  }
  streams.add(stream)
  stream.on('error', () => {})
  stream.on('close', () => streams.delete(stream))
  return stream
}

const coreStores = new Map()
function coreStore (name) { return coreStores.get(name) }

// A replica downloads nothing unasked: ask for every block up to `length`.
async function waitFor (core, length, fork) {
  let asked = ''
  for (;;) {
    if (core.length >= length && core.contiguousLength >= length &&
        (fork === undefined || core.fork === fork)) return
    if (!core.writable && core.fork + '/' + core.length !== asked) {
      asked = core.fork + '/' + core.length
      core.download({ start: 0, end: core.length })
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function machine (core, action, value) {
  const cube = new Coremachine(core.session({ valueEncoding: 'json' }), definition)
  cube.resume()
  await once(cube, 'open')
  if (action) await cube.action(action, value)
  const out = { state: cube.state, context: JSON.parse(JSON.stringify(cube.context)) }
  cube.destroy()
  return out
}

async function run (cmd) {
  const core = cores.get(cmd.name)
  switch (cmd.op) {
    case 'core':
      if (cmd.store) coreStores.set(cmd.name, cmd.store)
      return openCore(cmd)
    case 'listen': {
      const server = net.createServer((sock) => {
        const s = replicationStream(cmd.cores, false)
        sock.pipe(s).pipe(sock)
        sock.on('error', () => {})
      })
      if (cmd.path) {
        await new Promise((resolve) => server.listen(cmd.path, resolve))
        return {}
      }
      await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
      return { port: server.address().port }
    }
    case 'connect': {
      const sock = net.connect(cmd.port, '127.0.0.1')
      sock.on('error', () => {})
      const s = replicationStream(cmd.cores, true)
      sock.pipe(s).pipe(sock)
      return {}
    }
    case 'append': {
      const length = await core.append(cmd.blocks.map((h) => Buffer.from(h, 'hex')))
      return { length: length.length ?? length }
    }
    case 'truncate':
      await core.truncate(cmd.length)
      return { fork: core.fork, length: core.length }
    case 'wait':
      await waitFor(core, cmd.length, cmd.fork)
      return { length: core.length, fork: core.fork }
    case 'info':
      return { length: core.length, fork: core.fork, contiguous: core.contiguousLength, key: core.key.toString('hex') }
    case 'get':
      return { value: (await core.get(cmd.index)).toString('hex') }
    case 'download':
      await core.download({ start: cmd.start, end: cmd.end }).done()
      return {}
    case 'audit':
      return { audit: await core.core.audit() }
    case 'machine':
      return machine(core, cmd.action, cmd.value)
    case 'idle':   // the core wants nothing: it closes channels where no side downloads
      core.core.replicator._notDownloadingLinger = 0   // now, not after its linger timer
      core.core.replicator.setDownloading(false)
      return { downloading: core.core.replicator.isDownloading() }
    case 'disconnect':
      for (const s of streams) s.destroy()
      return {}
    default:
      throw new Error('unknown op ' + cmd.op)
  }
}

const lines = readline.createInterface({ input: process.stdin })
lines.on('line', (line) => {
  const cmd = JSON.parse(line)
  run(cmd).then(
    (out) => process.stdout.write(JSON.stringify({ id: cmd.id, ok: true, ...out }) + '\n'),
    (err) => process.stdout.write(JSON.stringify({ id: cmd.id, ok: false, error: String(err && err.stack || err) }) + '\n'))
})
lines.on('close', () => process.exit(0))
