// The JS side of the Hypercore-protocol benchmark: a replica that connects to
// a writer over TCP (initiator) and downloads every block.  argv: JSON
// {port, key, length, tree_hash, dir}.  Prints {seconds, cpu_seconds,
// max_rss_kib, blocks, ok}: ok when its tree hash is the writer's.
import Hypercore from 'hypercore'
import net from 'net'
import path from 'path'

const { port, key, length, tree_hash: treeHash, dir } = JSON.parse(process.argv[2])
const core = new Hypercore(path.join(dir, 'reader'), Buffer.from(key, 'hex'))
await core.ready()
const cpu0 = process.cpuUsage()
const t0 = process.hrtime.bigint()
const sock = net.connect(port, '127.0.0.1')
const stream = core.replicate(true)
sock.pipe(stream).pipe(sock)
sock.on('error', () => {})
await core.download({ start: 0, end: length }).done()
const seconds = Number(process.hrtime.bigint() - t0) / 1e9
const cpu = process.cpuUsage(cpu0)
const ok = (await core.treeHash()).toString('hex') === treeHash && core.contiguousLength === length
process.stdout.write(JSON.stringify({
  seconds,
  cpu_seconds: (cpu.user + cpu.system) / 1e6,
  max_rss_kib: process.resourceUsage().maxRSS,
  blocks: core.contiguousLength,
  ok
}) + '\n')
process.exit(0)
