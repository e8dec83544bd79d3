// The JS side of the Hypercore-protocol benchmark: a replica that connects to
// a writer over TCP (initiator) and downloads every block.  argv: JSON
// {port, key, length, tree_hash, dir}.  Prints {seconds, cpu_seconds,
// max_rss_kib, blocks, ok, db_reads, db_writes, socket_writes}: ok when its
// tree hash is the writer's; db_* are its RocksDB read and write batches
// (its fixed per-block storage work), socket_writes the writes of its requests.
import Hypercore from 'hypercore'
import net from 'net'
import path from 'path'

const { port, key, length, tree_hash: treeHash, dir } = JSON.parse(process.argv[2])
const core = new Hypercore(path.join(dir, 'reader'), Buffer.from(key, 'hex'))
await core.ready()
const cpu0 = process.cpuUsage()
const t0 = process.hrtime.bigint()
const sock = net.connect(port, '127.0.0.1')
let socketWrites = 0
const write = sock.write.bind(sock)
sock.write = (...args) => { socketWrites++; return write(...args) }
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
  ok,
  db_reads: core.core.storage.db._state.stats.readBatches,
  db_writes: core.core.storage.db._state.stats.writeBatches,
  socket_writes: socketWrites
}) + '\n')
process.exit(0)
