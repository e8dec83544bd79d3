// JS Coremachine 1.1.0 on hypercore 11: sequential awaited actions, then reopen
// and restore.  {count, dir, phase: "write"|"restore"} -> figures as JSON.
import Hypercore from 'hypercore'
import { createMachine, Coremachine } from 'coremachine'
import { once } from 'events'
import fs from 'fs'
import path from 'path'

const { count, dir, phase } = JSON.parse(fs.readFileSync(0, 'utf8'))
const definition = createMachine({
  initial: 'idle',
  context: { running: false, counter: 0 },
  states: {
    idle: { on: { START: { target: 'running', action: (ctx, n) => { ctx.running = true; ctx.counter = n } } } },
    running: { on: { INCREMENT: { target: 'running', action: (ctx) => { ctx.counter++ } } } }
  }
})

function du (d) {
  let total = 0
  for (const e of fs.readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name)
    total += e.isDirectory() ? du(p) : fs.statSync(p).size
  }
  return total
}

const core = new Hypercore(dir, { valueEncoding: 'json' })
const t0 = process.hrtime.bigint()
const cube = new Coremachine(core, definition)
cube.resume()
await once(cube, 'open')
const openMs = Number(process.hrtime.bigint() - t0) / 1e6
if (phase === 'write') {
  await cube.action('START', 0)
  const t1 = process.hrtime.bigint()
  for (let i = 1; i < count; i++) await cube.action('INCREMENT')
  const secs = Number(process.hrtime.bigint() - t1) / 1e9
  await core.close()
  process.stdout.write(JSON.stringify({ actions_per_s: (count - 1) / secs, bytes: du(dir) }))
} else {
  const rss = process.memoryUsage().rss
  process.stdout.write(JSON.stringify({ open_ms: openMs, rss, state: cube.state, counter: cube.context.counter }))
  await core.close()
}
