// tus-js-client under node, driven by tests/test_tus_clients.py.
// One JSON argument: {endpoint, file, token, chunkSize, parallelUploads, uploadUrl,
// deferLength, dataDuringCreation, abortAfter, terminate, filename, filetype}.  Prints one JSON line:
// {"status": "success" | "aborted" | "terminated" | "error", "url", "offset", "error"}.
import fs from 'node:fs'
import { PassThrough } from 'node:stream'
import * as tus from 'tus-js-client'

const options = JSON.parse(process.argv[2])
const print = (result) => process.stdout.write(JSON.stringify(result) + '\n')

let upload = null
const done = new Promise((resolve) => {
  // a file is read by path (its size known); a deferred length is for a plain stream,
  // whose size nobody knows until it ends
  const input = options.deferLength
    ? fs.createReadStream(options.file).pipe(new PassThrough())
    : fs.createReadStream(options.file)
  upload = new tus.Upload(input, {
    endpoint: options.endpoint,
    uploadUrl: options.uploadUrl || null,
    uploadLengthDeferred: Boolean(options.deferLength),
    chunkSize: options.chunkSize || Infinity,
    parallelUploads: options.parallelUploads || 1,
    uploadDataDuringCreation: Boolean(options.dataDuringCreation),
    headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
    metadata: { filename: options.filename || 'upload.bin', filetype: options.filetype || 'application/octet-stream' },
    retryDelays: [0, 200, 500, 1000],
    storeFingerprintForResuming: false,
    onProgress (sent) {
      if (options.abortAfter && sent >= options.abortAfter) {
        options.abortAfter = 0
        upload.abort(false).then(() => resolve({ status: 'aborted', url: upload.url, offset: sent }))
      }
    },
    onSuccess () { resolve({ status: 'success', url: upload.url }) },
    onError (error) { resolve({ status: 'error', url: upload.url, error: String(error) }) },
  })
  upload.start()
})

let result = await done
if (result.status === 'success' && options.terminate) {
  await tus.Upload.terminate(upload.url, { headers: { Authorization: `Bearer ${options.token}` } })
  result = { status: 'terminated', url: upload.url }
}
print(result)
