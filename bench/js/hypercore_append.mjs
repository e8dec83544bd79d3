// Append rate of the real hypercore 11: {count, size, batch} -> {single, batched} per second.
import Hypercore from 'hypercore'
import fs from 'fs'
import os from 'os'
import path from 'path'

const { count, size, batch, dir } = JSON.parse(fs.readFileSync(0, 'utf8'))
const block = Buffer.alloc(size, 7)

async function run (n, perCall) {
  const d = fs.mkdtempSync(path.join(dir, 'hc-'))
  const core = new Hypercore(d)
  await core.ready()
  const calls = Math.floor(n / perCall)
  const blocks = new Array(perCall).fill(block)
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < calls; i++) await core.append(perCall === 1 ? block : blocks)
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  await core.close()
  fs.rmSync(d, { recursive: true, force: true })
  return (calls * perCall) / secs
}

const single = await run(count, 1)
const batched = await run(count * 10, batch)
process.stdout.write(JSON.stringify({ single, batched }))
