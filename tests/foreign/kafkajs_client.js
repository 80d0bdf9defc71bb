// kafkajs, a client nobody here wrote, driven by tests/integration/test_foreign_clients.py.
//
//   node kafkajs_client.js BOOTSTRAP produce TOPIC            < JSON lines {"key": .., "value": ..}
//   node kafkajs_client.js BOOTSTRAP consume TOPIC GROUP TIMEOUT_MS  < JSON lines: keys wanted
//
// produce sends every line in one LZ4-compressed batch (acks from all replicas) and prints
// {"produced": N}. consume joins GROUP, reads TOPIC from the beginning until it has seen every
// key wanted or TIMEOUT_MS passed, commits, and prints {"records": [{partition, offset, key,
// value}, ...]} (every record it read).
// FRAUDLENS_KAFKAJS_LZ4=0 leaves the LZ4 codec out (what a user who did not install
// kafkajs-lz4 has). Any failure prints {"error": ...} and exits 1.
'use strict'

const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs')

if (process.env.FRAUDLENS_KAFKAJS_LZ4 !== '0') {
  const LZ4Codec = require('kafkajs-lz4')
  CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec
}

async function readStdin () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8').split('\n').filter(line => line.trim())
}

async function produce (kafka, topic) {
  const messages = (await readStdin()).map(line => JSON.parse(line))
  const producer = kafka.producer()
  await producer.connect()
  try {
    await producer.send({ topic, acks: -1, compression: CompressionTypes.LZ4, messages })
  } finally {
    await producer.disconnect()
  }
  return { produced: messages.length }
}

async function consume (kafka, topic, groupId, timeoutMs) {
  const wanted = new Set((await readStdin()).map(line => JSON.parse(line)))
  const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 500 })
  const records = []
  let failure = null
  await consumer.connect()
  try {
    await consumer.subscribe({ topic, fromBeginning: true })
    await new Promise(resolve => {
      const timer = setTimeout(resolve, timeoutMs)
      // A fetch the client cannot decode (no codec) crashes the runner: report it, do not wait.
      consumer.on(consumer.events.CRASH, event => {
        failure = event.payload.error
        clearTimeout(timer)
        resolve()
      })
      consumer.run({
        autoCommit: true,
        eachMessage: async ({ partition, message }) => {
          records.push({
            partition,
            offset: Number(message.offset),
            key: message.key && message.key.toString('utf8'),
            value: message.value && message.value.toString('utf8')
          })
          wanted.delete(records[records.length - 1].key)
          if (wanted.size === 0) {
            clearTimeout(timer)
            resolve()
          }
        }
      })
    })
  } finally {
    await consumer.disconnect() // commits what eachMessage resolved
  }
  if (failure) throw failure
  return { records }
}

async function main () {
  const [bootstrap, command, ...args] = process.argv.slice(2)
  const kafka = new Kafka({
    clientId: 'fraudlens-foreign-kafkajs',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    retry: { retries: 3 }
  })
  if (command === 'produce') return produce(kafka, args[0])
  if (command === 'consume') return consume(kafka, args[0], args[1], Number(args[2]))
  throw new Error(`unknown command ${command}: produce or consume`)
}

main().then(
  result => { process.stdout.write(JSON.stringify(result) + '\n') },
  error => {
    process.stdout.write(JSON.stringify({ error: `${error.name}: ${error.message}` }) + '\n')
    process.exitCode = 1
  }
)
