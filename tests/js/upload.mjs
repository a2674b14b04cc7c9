// Uploads one file with tus-js-client (Node), for tests/test_tus_js_client.py.
//   node upload.mjs <endpoint> <file path> <chunkSize bytes> <parallelUploads> [protocol]
// protocol: tus-v1 (default), ietf-draft-03 or ietf-draft-05 (IETF Resumable Uploads, interop 5 / 6).
// On success prints {"url": <upload url>} on stdout and exits 0; on error prints it on stderr, exits 1.
import { createReadStream } from 'node:fs'
import { basename } from 'node:path'
import { Upload } from 'tus-js-client'

const [endpoint, path, chunkSize, parallelUploads, protocol = 'tus-v1'] = process.argv.slice(2)
if (!endpoint || !path || !chunkSize || !parallelUploads) {
  console.error('usage: node upload.mjs <endpoint> <file path> <chunkSize bytes> <parallelUploads>')
  process.exit(2)
}

const parallel = Number(parallelUploads)
// An fs.ReadStream with a path is read as a file: tus-js-client knows its size and can slice it,
// which parallelUploads needs.
const upload = new Upload(createReadStream(path), {
  endpoint,
  chunkSize: Number(chunkSize),
  metadata: { filename: basename(path), filetype: 'application/octet-stream' },
  protocol,
  retryDelays: [0, 200, 500],
  ...(parallel > 1 ? { parallelUploads: parallel } : {}),
  onError(error) {
    console.error(String(error))
    process.exit(1)
  },
  onSuccess() {
    process.stdout.write(`${JSON.stringify({ url: upload.url })}\n`, () => process.exit(0))
  },
})
upload.start()
