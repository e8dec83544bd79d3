// Replays cases {seed, compat, ops: [{append: [hex...]} | {truncate: n}]} through the
// real hypercore and prints, per op, the key, length, fork, tree hash and signature.
import Hypercore from 'hypercore'
import crypto from 'hypercore-crypto'
import fs from 'fs'
import os from 'os'
import path from 'path'

const input = JSON.parse(fs.readFileSync(0, 'utf8'))
const out = []
for (const c of input) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-hc-'))
  const core = new Hypercore(dir, {
    keyPair: crypto.keyPair(Buffer.from(c.seed, 'hex')),
    compat: c.compat
  })
  await core.ready()
  const states = []
  for (const op of c.ops) {
    if (op.append) await core.append(op.append.map((h) => Buffer.from(h, 'hex')))
    else await core.truncate(op.truncate)
    states.push({
      length: core.length,
      fork: core.fork,
      tree_hash: (await core.treeHash()).toString('hex'),
      signature: core.state.signature ? Buffer.from(core.state.signature).toString('hex') : null
    })
  }
  out.push({ key: core.key.toString('hex'), discovery_key: core.discoveryKey.toString('hex'), states })
  await core.close()
  fs.rmSync(dir, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify(out))
