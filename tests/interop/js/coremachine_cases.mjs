// The real coremachine@1.1.0 on the real hypercore 11, driven by JSON cases:
//   {mode: "restore", seed, blocks: [hex]}  append our block bytes (one append each),
//        then open a Coremachine on the core and report its restored state;
//   {mode: "run", seed, events: [[name, value, hasValue]]}  run actions, report
//        the blocks, the outcome of each action and the final state.
// Both report the key and, after every append, the tree hash and signature.
import Hypercore from 'hypercore'
import crypto from 'hypercore-crypto'
import { createMachine, Coremachine } from 'coremachine'
import { once } from 'events'
import fs from 'fs'
import os from 'os'
import path from 'path'

// The quick-start machine of the Coremachine README.
const definition = createMachine({
  initial: 'idle',
  context: { running: false, counter: 0 },
  states: {
    idle: {
      on: {
        START: { target: 'running', action: (ctx, counter) => { ctx.running = true; ctx.counter = counter } }
      }
    },
    running: {
      on: {
        INCREMENT: { target: 'running', action: (ctx) => { ctx.counter++ } },
        STOP: {
          target: 'idle',
          action: (ctx, finalCount) => {
            ctx.running = false
            if (finalCount !== undefined) ctx.counter = finalCount
          }
        }
      }
    }
  }
})

async function state (core) {
  return {
    length: core.length,
    tree_hash: (await core.treeHash()).toString('hex'),
    signature: Buffer.from(core.state.signature).toString('hex')
  }
}

async function openMachine (core) {
  const cube = new Coremachine(core, definition)
  cube.resume()
  await once(cube, 'open')
  return cube
}

const input = JSON.parse(fs.readFileSync(0, 'utf8'))
const out = []
for (const c of input) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cm-js-'))
  const keyPair = crypto.keyPair(Buffer.from(c.seed, 'hex'))
  if (c.mode === 'restore') {
    const core = new Hypercore(dir, { keyPair })
    await core.ready()
    const states = []
    for (const hex of c.blocks) {
      await core.append(Buffer.from(hex, 'hex'))
      states.push(await state(core))
    }
    const cube = await openMachine(core.session({ valueEncoding: 'json' }))
    out.push({ key: core.key.toString('hex'), states, state: cube.state, context: cube.context })
    cube.destroy()
    await core.close()
  } else {
    const core = new Hypercore(dir, { keyPair, valueEncoding: 'json' })
    await core.ready()
    const cube = await openMachine(core)
    const results = []
    const states = []
    for (const [name, value, hasValue] of c.events) {
      try {
        await cube.action(name, hasValue ? value : undefined)
        results.push('ok')
        states.push(await state(core))
      } catch (e) {
        results.push(e.message)
      }
    }
    const blocks = []
    for (let i = 0; i < core.length; i++) {
      blocks.push((await core.get(i, { valueEncoding: 'binary' })).toString('hex'))
    }
    out.push({ key: core.key.toString('hex'), blocks, results, states, state: cube.state, context: cube.context })
    await core.close()
  }
  fs.rmSync(dir, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify(out))
