// @tus/server with @tus/file-store: the tus server a node user would pick instead of Spillway.
// Started by benchmark/fleet.py: node server.mjs PORT DIRECTORY (loopback only).
import http from 'node:http'
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const [port, directory] = process.argv.slice(2)
const tus = new Server({ path: '/files', datastore: new FileStore({ directory }) })
http.createServer((req, res) => tus.handle(req, res)).listen(Number(port), '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${port}`)
})
