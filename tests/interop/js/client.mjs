// vgi-flight interop client in JavaScript: @grpc/grpc-js + @grpc/proto-loader for Flight's gRPC
// service, apache-arrow for Arrow IPC. Written from docs/wire-protocol.md alone; it checks every
// expectation of tests/interop/README.md and prints "INTEROP OK js".
//
// There is no official Flight client for JavaScript, so this speaks Flight at the gRPC level:
// a FlightData message carries one IPC message as data_header (the flatbuffer Message, without
// the continuation marker and length prefix) plus data_body (the message body).

import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual, inspect } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import * as arrow from 'apache-arrow';

const LANG = 'js';

// ---------------------------------------------------------------------------------------------
// Assertions

class Mismatch extends Error {}

function check(cond, what) {
  if (!cond) throw new Mismatch(what);
}

function eq(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Mismatch(`${what}: expected ${inspect(expected, { depth: 5 })}, got ${inspect(actual, { depth: 5 })}`);
  }
}

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

// ---------------------------------------------------------------------------------------------
// HMAC request signing (wire-protocol §11.1)

function sha256Hex(bytes) {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

function hmacHeader(kid, secret, rpc, payload, ts, nonce) {
  const digest = sha256Hex(payload);
  const stringToSign = ['VGI-HMAC-SHA256', kid, ts, nonce, rpc, digest].join('\n');
  const sig = crypto.createHmac('sha256', secret).update(stringToSign, 'utf8').digest('base64');
  return `VGI-HMAC-SHA256 kid=${kid}, ts=${ts}, nonce=${nonce}, digest=${digest}, sig=${sig}`;
}

// The payload a signature covers (§11.1): DoAction signs "<type>\n<body>"; DoGet the ticket;
// GetFlightInfo/DoExchange the descriptor's cmd.
function actionPayload(type, body) {
  return Buffer.concat([Buffer.from(`${type}\n`, 'utf8'), body]);
}

// Check our signing against the worked example of §11.5 before talking to the server.
function selfTestHmac() {
  const header = hmacHeader(
    'k-demo',
    Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex'),
    'DoAction',
    actionPayload('whoami', Buffer.alloc(0)),
    '1700000000',
    '0123456789abcdef01234567',
  );
  eq(
    header,
    'VGI-HMAC-SHA256 kid=k-demo, ts=1700000000, nonce=0123456789abcdef01234567, ' +
      'digest=33e7267d8409d63707706f95f3d67ee9be5fd3a2c6ffc60856c9baeca1ae3ed4, ' +
      'sig=ppQuvJURVrutnPMzbu/15Em8+HezlJuLGe+DJ+t0ZQQ=',
    '§11.5 worked example',
  );
}

// ---------------------------------------------------------------------------------------------
// Arrow IPC: building call requests, splitting streams into messages, re-framing messages

const EOS = Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
const pad8 = (n) => (n + 7) & ~7;

// IPC stream of one batch: `columns[k]` holds the values of `fields[k]`. With no fields the batch
// has one row (a call request of a method without parameters, §2).
function ipcStream(fields, columns, metadata = new Map()) {
  const schema = new arrow.Schema(fields, metadata);
  const children = fields.map((f, k) => arrow.vectorFromArray(columns[k], f.type).data[0]);
  const length = fields.length ? columns[0].length : 1;
  const data = arrow.makeData({ type: new arrow.Struct(fields), length, nullCount: 0, children });
  const batch = new arrow.RecordBatch(schema, data);
  return Buffer.from(arrow.RecordBatchStreamWriter.writeAll([batch]).toUint8Array(true));
}

// A call request (§2): one row of arguments, the method named in the schema metadata.
function callRequest(method, fields, values) {
  return ipcStream(
    fields,
    values.map((v) => [v]),
    new Map([['vgi.method', method], ['vgi.version', '1']]),
  );
}

// Split an IPC stream into [{header, body}], header being the flatbuffer Message (FlightData's
// data_header) and body its body (data_body).
function splitIpcStream(bytes) {
  const messages = [];
  let off = 0;
  while (off < bytes.length) {
    let len = bytes.readInt32LE(off);
    off += 4;
    if (len === -1) {
      // continuation marker 0xFFFFFFFF, then the real length
      len = bytes.readInt32LE(off);
      off += 4;
    }
    if (len === 0) break; // end-of-stream marker
    const header = bytes.subarray(off, off + len);
    off += len;
    const bodyLength = Number(arrow.Message.decode(header).bodyLength);
    messages.push({ header, body: bytes.subarray(off, off + bodyLength) });
    off += bodyLength;
  }
  return messages;
}

// Re-frame a FlightData's data_header + data_body as one encapsulated IPC message:
// continuation marker, int32 LE metadata length (padded so the body starts 8-aligned), metadata,
// body (exactly the bodyLength its header announces).
function frame(header, body) {
  const metaLen = pad8(header.length);
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32LE(0xffffffff, 0);
  prefix.writeInt32LE(metaLen, 4);
  const bodyLength = Number(arrow.Message.decode(header).bodyLength);
  const fullBody = Buffer.alloc(bodyLength);
  Buffer.from(body.buffer, body.byteOffset, Math.min(body.length, bodyLength)).copy(fullBody);
  return Buffer.concat([prefix, header, Buffer.alloc(metaLen - header.length), fullBody]);
}

// An IPC schema (encapsulated schema message, as in FlightInfo.schema and input_schema).
function readIpcSchema(bytes) {
  return new arrow.MessageReader(bytes).readSchema(true);
}

function schemaShape(schema) {
  return schema.fields.map((f) => [f.name, String(f.type)]);
}

// The single row of a one-batch IPC stream (the unary result, a stream header), as a plain object.
function singleRow(bytes) {
  const table = arrow.tableFromIPC(bytes);
  eq(table.numRows, 1, 'rows in a one-row IPC stream');
  return table.get(0).toJSON();
}

// ---------------------------------------------------------------------------------------------
// gRPC plumbing

function makeClient() {
  const protoPath = fileURLToPath(new URL('../proto/flight.proto', import.meta.url));
  // keepCase: field names as in the proto (data_header, app_metadata); bytes arrive as Buffers.
  const def = protoLoader.loadSync(protoPath, { keepCase: true, longs: String, enums: String, defaults: true });
  const { FlightService } = grpc.loadPackageDefinition(def).arrow.flight.protocol;
  const location = env('VGI_LOCATION');
  const m = /^grpc\+tls:\/\/(.+)$/.exec(location);
  if (!m) throw new Error(`VGI_LOCATION must be grpc+tls://host:port, got ${location}`);
  // mTLS: the server is verified against VGI_CA, we present VGI_CERT/VGI_KEY.
  const creds = grpc.credentials.createSsl(
    readFileSync(env('VGI_CA')),
    readFileSync(env('VGI_KEY')),
    readFileSync(env('VGI_CERT')),
  );
  // The server certificate names localhost (the location is an IP); the default 4 MiB receive
  // limit is kept on purpose: the server must slice big batches (data_part).
  return new FlightService(m[1], creds, {
    'grpc.ssl_target_name_override': 'localhost',
    'grpc.default_authority': 'localhost',
  });
}

class Caller {
  constructor(client, kid, secret) {
    this.client = client;
    this.kid = kid;
    this.secret = secret;
  }

  // Fresh signature per call (new ts and nonce, digest of this call's payload).
  metadata(rpc, payload, secret = this.secret) {
    const ts = String(Math.floor(Date.now() / 1000));
    const nonce = crypto.randomBytes(12).toString('hex');
    const md = new grpc.Metadata();
    md.set('authorization', hmacHeader(this.kid, secret, rpc, payload, ts, nonce));
    return md;
  }

  // DoAction: every Result but the last is a JSON log record; the last is the return value.
  async doAction(type, body, secret = this.secret) {
    const call = this.client.DoAction({ type, body }, this.metadata('DoAction', actionPayload(type, body), secret));
    const results = [];
    for await (const r of call) results.push(r.body);
    check(results.length >= 1, `${type}: no Result`);
    const logs = results.slice(0, -1).map((b) => JSON.parse(b.toString('utf8')));
    return { logs, value: results[results.length - 1] };
  }

  getFlightInfo(cmd) {
    return new Promise((resolve, reject) => {
      this.client.GetFlightInfo({ type: 'CMD', cmd }, this.metadata('GetFlightInfo', cmd), (err, info) =>
        err ? reject(err) : resolve(info),
      );
    });
  }

  doGet(ticket) {
    return new FlightStream(this.client.DoGet({ ticket }, this.metadata('DoGet', ticket)));
  }

  // DoExchange: the first message carries the descriptor (cmd = token or call request) and the
  // input schema; the signature covers that cmd.
  doExchange(cmd, inputFields) {
    const call = this.client.DoExchange(this.metadata('DoExchange', cmd));
    const [schemaMsg] = splitIpcStream(ipcStream(inputFields, inputFields.map(() => [])));
    call.write({ flight_descriptor: { type: 'CMD', cmd }, data_header: schemaMsg.header, data_body: schemaMsg.body });
    return new FlightStream(call);
  }
}

// The JSON error of a failed call (§9): the first JSON object in the status message.
function errorJson(err) {
  const text = String(err.details ?? err.message ?? '');
  const start = text.indexOf('{');
  check(start >= 0, `error without a JSON message: ${text}`);
  let depth = 0;
  let inString = false;
  for (let k = start; k < text.length; k++) {
    const c = text[k];
    if (inString) {
      if (c === '\\') k++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{') depth++;
    else if (c === '}' && --depth === 0) return JSON.parse(text.slice(start, k + 1));
  }
  throw new Mismatch(`unterminated JSON in error message: ${text}`);
}

async function expectError(promise, what) {
  try {
    await promise;
  } catch (err) {
    if (err instanceof Mismatch) throw err;
    check(typeof err.code === 'number', `${what}: not a gRPC error: ${err.stack}`);
    return { status: err.code, json: errorJson(err) };
  }
  throw new Mismatch(`${what}: expected an error, the call succeeded`);
}

// Server messages of a DoGet/DoExchange: absorbs the schema message, decodes each message's
// app_metadata JSON and record batch, and reassembles data_part slices (§6.4).
class FlightStream {
  constructor(call) {
    this.call = call;
    this.it = call[Symbol.asyncIterator]();
    this.schemaFrame = null;
  }

  // The next message with app_metadata as {meta, batch}, or null at the end of the stream.
  async next() {
    for (;;) {
      const { value: msg, done } = await this.it.next();
      if (done) return null;
      let batch = null;
      if (msg.data_header.length > 0) {
        const m = arrow.Message.decode(msg.data_header);
        if (m.isSchema()) {
          this.schemaFrame = frame(msg.data_header, msg.data_body);
        } else if (m.isRecordBatch()) {
          check(this.schemaFrame !== null, 'record batch before the schema');
          const bytes = Buffer.concat([this.schemaFrame, frame(msg.data_header, msg.data_body), EOS]);
          batch = arrow.tableFromIPC(bytes);
        } else {
          throw new Mismatch(`unexpected IPC message type ${m.headerType}`);
        }
      }
      if (msg.app_metadata.length === 0) {
        check(batch === null, 'a record batch without app_metadata (§5.2: every message carries it)');
        continue;
      }
      return { meta: JSON.parse(msg.app_metadata.toString('utf8')), batch };
    }
  }

  async expectReady(seq) {
    const m = await this.next();
    check(m !== null, 'stream ended before ready');
    eq(m.meta.kind, 'ready', 'first message kind');
    eq(m.meta.seq, seq, 'ready seq');
    check(typeof m.meta.token === 'string' && m.meta.token.length > 0, 'ready carries a token');
    check(m.batch === null || m.batch.numRows === 0, 'ready is a zero-row message');
    return m.meta;
  }

  // One turn: the log messages, then one logical data batch (data_part slices + data).
  // Returns null when the stream ended cleanly before any message.
  async nextData() {
    const logs = [];
    const slices = [];
    let partSeq = null;
    for (;;) {
      const m = await this.next();
      if (m === null) {
        check(logs.length === 0 && slices.length === 0, 'stream ended in the middle of a turn');
        return null;
      }
      const { meta, batch } = m;
      if (meta.kind === 'log') {
        check(slices.length === 0, 'log between data_part slices');
        logs.push(meta);
      } else if (meta.kind === 'data_part') {
        check(partSeq === null || partSeq === meta.seq, 'data_part slices of different batches');
        partSeq = meta.seq;
        slices.push(batch);
      } else if (meta.kind === 'data') {
        check(partSeq === null || partSeq === meta.seq, `data seq ${meta.seq} after data_part seq ${partSeq}`);
        slices.push(batch);
        return { logs, meta, slices, table: new arrow.Table(slices.flatMap((t) => t.batches)) };
      } else {
        // §6: ignore zero-row messages of unknown kinds.
        check(batch === null || batch.numRows === 0, `unknown kind ${meta.kind} with rows`);
      }
    }
  }

  // An input batch: the record batch message of a one-batch IPC stream (its schema was sent first).
  sendBatch(fields, columns) {
    const [, batchMsg] = splitIpcStream(ipcStream(fields, columns));
    this.call.write({ data_header: batchMsg.header, data_body: batchMsg.body });
  }

  // Half-close and read to the end: no more data is expected.
  async close() {
    this.call.end();
    const rest = await this.nextData();
    eq(rest, null, 'messages after half-close');
  }
}

function column(table, name) {
  const vec = table.getChild(name);
  check(vec !== null, `missing column ${name}`);
  return [...vec];
}

// ---------------------------------------------------------------------------------------------
// The checks of tests/interop/README.md

const { Field, Int64, Float64, Utf8, List, Struct } = arrow;
const pointType = new Struct([
  new Field('x', new Float64(), false),
  new Field('y', new Float64(), false),
  new Field('tags', new List(new Field('item', new Utf8(), true)), false),
]);

async function unary(c) {
  const result = async (method, fields, values) => {
    const { value } = await c.doAction(method, callRequest(method, fields, values));
    return singleRow(value).result;
  };

  eq(
    await result('add', [new Field('a', new Int64(), false), new Field('b', new Int64(), false)], [2n, 40n]),
    42n,
    'add(2, 40)',
  );

  const pointFields = [new Field('p', pointType, false), new Field('label', new Utf8(), true)];
  const p = { x: 1.5, y: -2.0, tags: ['a', 'b'] };
  eq(await result('describe_point', pointFields, [p, null]), 'point:1.5,-2:2', 'describe_point(label=null)');
  eq(await result('describe_point', pointFields, [p, 'P']), 'P:1.5,-2:2', 'describe_point(label="P")');

  const scaled = await result(
    'scale',
    [new Field('p', pointType, false), new Field('factor', new Float64(), false)],
    [{ x: 1.0, y: 2.0, tags: ['t'] }, 2.5],
  );
  eq({ x: scaled.x, y: scaled.y, tags: [...scaled.tags] }, { x: 2.5, y: 5.0, tags: ['t'] }, 'scale');

  const noop = await c.doAction('noop', callRequest('noop', [], []));
  eq(arrow.tableFromIPC(noop.value).schema.fields.length, 0, 'noop result schema field count');

  const fail = await expectError(
    c.doAction('fail', callRequest('fail', [new Field('message', new Utf8(), false)], ['boom'])),
    'fail("boom")',
  );
  eq(fail.status, grpc.status.UNKNOWN, 'fail: gRPC status');
  eq(
    [fail.json.vgi_error, fail.json.code, fail.json.error_type, fail.json.error_message],
    [1, 'UNKNOWN', 'ValueError', 'boom'],
    'fail: error JSON',
  );

  eq(await result('whoami', [], []), 'interop-client', 'whoami');

  const wrongSecret = crypto.randomBytes(32);
  const addBody = callRequest('add', [new Field('a', new Int64(), false), new Field('b', new Int64(), false)], [2n, 40n]);
  const denied = await expectError(c.doAction('add', addBody, wrongSecret), 'add with a wrong secret');
  eq(denied.status, grpc.status.UNAUTHENTICATED, 'wrong secret: gRPC status');
  eq(
    [denied.json.code, denied.json.error_type, denied.json.error_message],
    ['UNAUTHENTICATED', 'Unauthenticated', 'authentication failed'],
    'wrong secret: error JSON (§11.4)',
  );
}

// FlightInfo checks common to producers and exchanges (§5.1); returns [app_metadata, ticket].
function checkFlightInfo(info, kind, outputShape, inputShape, header) {
  const meta = JSON.parse(info.app_metadata.toString('utf8'));
  eq(meta.kind, kind, 'FlightInfo app_metadata.kind');
  eq(meta.seq, 0, 'FlightInfo app_metadata.seq');
  eq(schemaShape(readIpcSchema(info.schema)), outputShape, 'FlightInfo.schema');
  eq(schemaShape(readIpcSchema(Buffer.from(meta.input_schema, 'base64'))), inputShape, 'app_metadata.input_schema');
  eq(singleRow(Buffer.from(meta.header, 'base64')), header, 'app_metadata.header');
  eq(info.endpoint.length, 1, 'FlightInfo endpoints');
  eq(info.endpoint[0].location.length, 0, 'endpoint locations');
  const ticket = info.endpoint[0].ticket.ticket;
  check(ticket.length > 0, 'endpoint has a ticket');
  return ticket;
}

async function producer(c) {
  const cmd = callRequest(
    'generate',
    [new Field('count', new Int64(), false), new Field('big_rows', new Int64(), false)],
    [4n, 300000n],
  );
  const info = await c.getFlightInfo(cmd);
  const ticket = checkFlightInfo(
    info,
    'producer',
    [['i', 'Int64'], ['text', 'Utf8']],
    [],
    { count: 4n, label: 'generate 4' },
  );

  const stream = c.doGet(ticket);
  await stream.expectReady(0);
  const expected = [
    [0, 10],
    [0, 300000],
    [20, 30],
    [30, 40],
  ];
  let sliced = 0;
  for (const [k, [lo, hi]] of expected.entries()) {
    const turn = await stream.nextData();
    check(turn !== null, `producer ended after ${k} batches`);
    eq(turn.meta.seq, k + 1, 'data seq');
    eq(turn.logs.length, 0, `batch ${k + 1} logs`);
    if (turn.slices.length > 1) sliced++;
    const want = Array.from({ length: hi - lo }, (_, n) => lo + n);
    eq(turn.table.numRows, want.length, `batch ${k + 1} rows`);
    const is = column(turn.table, 'i');
    const texts = column(turn.table, 'text');
    for (let n = 0; n < want.length; n++) {
      if (is[n] !== BigInt(want[n]) || texts[n] !== `row-${want[n]}`) {
        throw new Mismatch(`batch ${k + 1} row ${n}: got i=${is[n]} text=${texts[n]}, want ${want[n]}`);
      }
    }
  }
  eq(await stream.nextData(), null, 'producer end after 4 batches');
  check(sliced === 1, `expected only batch 2 to arrive as data_part slices, got ${sliced} sliced batches`);
}

async function exchange(c) {
  const valueFields = [new Field('value', new Float64(), true)];
  const info = await c.getFlightInfo(callRequest('accumulate', [new Field('start', new Float64(), false)], [1.0]));
  const ticket = checkFlightInfo(info, 'exchange', [['total', 'Float64'], ['turns', 'Int64']], [['value', 'Float64']], {
    start: 1.0,
  });

  // One turn: send {value: values}, expect log "turn n" then data {total, turns: n} with seq n.
  const turn = async (stream, values, n, total) => {
    stream.sendBatch(valueFields, [values]);
    const got = await stream.nextData();
    check(got !== null, `exchange ended before turn ${n}`);
    eq(got.logs.map((l) => [l.level, l.message]), [['INFO', `turn ${n}`]], `turn ${n} logs`);
    eq(got.meta.seq, n, `turn ${n} data seq`);
    eq(got.table.numRows, 1, `turn ${n} rows`);
    eq(got.table.get(0).toJSON(), { total, turns: BigInt(n) }, `turn ${n} data`);
    return got.meta;
  };

  const first = c.doExchange(ticket, valueFields);
  await first.expectReady(0);
  await turn(first, [1.0, 2.0], 1, 4.0);
  const last = await turn(first, [3.0], 2, 7.0);
  await first.close();

  // Resume from the token of the last data message.
  const resumed = c.doExchange(Buffer.from(last.token, 'base64'), valueFields);
  const ready = await resumed.expectReady(2);
  check(!('header' in ready), 'a resumed stream sends no header (§5.4)');
  await turn(resumed, [10.0], 3, 17.0);
  await resumed.close();
}

async function main() {
  selfTestHmac();
  const client = makeClient();
  const c = new Caller(client, env('VGI_HMAC_KID'), Buffer.from(env('VGI_HMAC_SECRET_HEX'), 'hex'));
  try {
    await unary(c);
    console.log('unary ok');
    await producer(c);
    console.log('producer ok');
    await exchange(c);
    console.log('exchange ok');
  } finally {
    client.close();
  }
  console.log(`INTEROP OK ${LANG}`);
}

main().catch((err) => {
  console.error(`INTEROP FAILED ${LANG}: ${err instanceof Mismatch ? err.message : err.stack}`);
  process.exit(1);
});
