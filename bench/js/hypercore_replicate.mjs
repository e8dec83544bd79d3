// In-process replication of the same log with the real hypercore 11: a writer
// with the given blocks, a replica by key, the two replication streams piped
// together, time until the replica holds every block.  {blocks_file, dir} -> {runs: [{seconds, blocks, ok}]}
import Hypercore from 'hypercore'
import fs from 'fs'
import path from 'path'

const { blocks_file: blocksFile, dir } = JSON.parse(fs.readFileSync(0, 'utf8'))
const blocks = JSON.parse(fs.readFileSync(blocksFile, 'utf8')).map((h) => Buffer.from(h, 'hex'))
const writer = new Hypercore(path.join(dir, 'w'))
await writer.ready()
for (let i = 0; i < blocks.length; i += 1000) await writer.append(blocks.slice(i, i + 1000))
// Three fresh replicas one after the other, so the JIT is warm for the later
// ones: the caller takes the median, as for our three pulling processes.
const runs = []
for (let k = 0; k < 3; k++) {
  const replica = new Hypercore(path.join(dir, 'r' + k), writer.key)
  await replica.ready()
  const t0 = process.hrtime.bigint()
  const s1 = writer.replicate(true)
  const s2 = replica.replicate(false)
  s1.pipe(s2).pipe(s1)
  await replica.download({ start: 0, end: blocks.length }).done()
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  const ok = (await replica.treeHash()).equals(await writer.treeHash())
  runs.push({ seconds, blocks: replica.contiguousLength, ok })
  s1.destroy()
  s2.destroy()
  await replica.close()
}
process.stdout.write(JSON.stringify({ runs }))
await writer.close()
