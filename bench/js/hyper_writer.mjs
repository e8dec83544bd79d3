// The JS side of the Hypercore-protocol benchmark: a writer holding the given
// blocks, serving them over TCP (responder).  argv: JSON {blocks_file, dir}.
// Prints {port, key}; then each line "stats" on stdin prints its CPU seconds
// and RSS so far; it exits when stdin closes.
import Hypercore from 'hypercore'
import net from 'net'
import fs from 'fs'
import path from 'path'
import readline from 'readline'

const { blocks_file: blocksFile, dir } = JSON.parse(process.argv[2])
const blocks = JSON.parse(fs.readFileSync(blocksFile, 'utf8')).map((h) => Buffer.from(h, 'hex'))
const core = new Hypercore(path.join(dir, 'writer'))
await core.ready()
for (let i = 0; i < blocks.length; i += 1000) await core.append(blocks.slice(i, i + 1000))
const server = net.createServer((sock) => {
  const stream = core.replicate(false)
  sock.pipe(stream).pipe(sock)
  sock.on('error', () => {})
  stream.on('error', () => {})
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
process.stdout.write(JSON.stringify({ port: server.address().port, key: core.key.toString('hex') }) + '\n')
readline.createInterface({ input: process.stdin })
  .on('line', () => {
    const cpu = process.cpuUsage()
    process.stdout.write(JSON.stringify({
      cpu_seconds: (cpu.user + cpu.system) / 1e6,
      max_rss_kib: process.resourceUsage().maxRSS
    }) + '\n')
  })
  .on('close', () => process.exit(0))
