//! vgi-flight interop client in Rust, written from docs/wire-protocol.md alone.
//!
//! It uses the official `arrow-flight` crate (the tonic-generated `FlightServiceClient`) over mTLS,
//! signs every call with the HMAC scheme of §11.1, and asserts every expectation listed in
//! tests/interop/README.md. On success it prints `INTEROP OK rust`; on any mismatch it prints the
//! reason and exits non-zero.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    Array, ArrayRef, Float64Array, Int64Array, ListArray, RecordBatch, RecordBatchOptions,
    StringArray, StructArray,
};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightData, FlightDescriptor, FlightInfo, Ticket};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

type Res<T> = Result<T, Box<dyn std::error::Error>>;
type Client = FlightServiceClient<Channel>;

/// `check!(cond, "fmt", args...)`: fail the run with a clear message when an expectation is not met.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

// ---------------------------------------------------------------------------------------------
// §11.1 HMAC request signing
// ---------------------------------------------------------------------------------------------

struct Signer {
    kid: String,
    secret: Vec<u8>,
}

impl Signer {
    /// The `authorization` header value for one call, given the time and nonce (§11.1).
    fn header_at(&self, rpc: &str, payload: &[u8], ts: u64, nonce: &str) -> String {
        let digest = hex::encode(Sha256::digest(payload));
        let string_to_sign =
            ["VGI-HMAC-SHA256", &self.kid, &ts.to_string(), nonce, rpc, &digest].join("\n");
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key size");
        mac.update(string_to_sign.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!(
            "VGI-HMAC-SHA256 kid={}, ts={ts}, nonce={nonce}, digest={digest}, sig={sig}",
            self.kid
        )
    }

    /// A freshly signed header: every call needs a new `ts` and a nonce never used before.
    fn header(&self, rpc: &str, payload: &[u8]) -> Res<String> {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut nonce = [0u8; 12]; // 24 hex characters, as §11.1 recommends
        std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
        Ok(self.header_at(rpc, payload, ts, &hex::encode(nonce)))
    }

    /// Wrap a message in a `tonic::Request` carrying this call's signature as gRPC metadata.
    fn request<T>(&self, msg: T, rpc: &str, payload: &[u8]) -> Res<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        let value: MetadataValue<_> = self.header(rpc, payload)?.parse()?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// The worked example of §11.5, so a signing bug shows up as a clear local failure.
fn check_worked_example() -> Res<()> {
    let signer = Signer { kid: "k-demo".into(), secret: (0u8..32).collect() };
    let got = signer.header_at("DoAction", b"whoami\n", 1_700_000_000, "0123456789abcdef01234567");
    let want = "VGI-HMAC-SHA256 kid=k-demo, ts=1700000000, nonce=0123456789abcdef01234567, \
                digest=33e7267d8409d63707706f95f3d67ee9be5fd3a2c6ffc60856c9baeca1ae3ed4, \
                sig=ppQuvJURVrutnPMzbu/15Em8+HezlJuLGe+DJ+t0ZQQ=";
    check!(got == want, "§11.5 worked example: got {got:?}, want {want:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Arrow helpers: call requests (§2) and IPC streams
// ---------------------------------------------------------------------------------------------

/// A call request (§2): an IPC stream with `vgi.method` schema metadata and one one-row batch.
fn call_request(method: &str, columns: Vec<(Field, ArrayRef)>) -> Res<Vec<u8>> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let metadata = HashMap::from([
        ("vgi.method".to_string(), method.to_string()),
        ("vgi.version".to_string(), "1".to_string()),
    ]);
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    // Explicit row count so that a method without parameters still sends one (zero-column) row.
    let options = RecordBatchOptions::new().with_row_count(Some(1));
    let batch = RecordBatch::try_new_with_options(schema.clone(), arrays, &options)?;
    let mut writer = StreamWriter::try_new(Vec::new(), &schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// Read an IPC stream that must hold exactly one batch.
fn read_one_batch(ipc: &[u8], what: &str) -> Res<RecordBatch> {
    let reader = StreamReader::try_new(Cursor::new(ipc), None)?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    check!(batches.len() == 1, "{what}: expected one batch in the IPC stream, got {}", batches.len());
    Ok(batches.into_iter().next().unwrap())
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Res<&'a T> {
    let col = batch.column_by_name(name).ok_or_else(|| format!("no column {name:?} in {:?}", batch.schema()))?;
    col.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column {name:?} has unexpected type {}", col.data_type()).into())
}

/// The nested `Point` dataclass: struct {x: float64, y: float64, tags: list<utf8>} (§8).
fn point_fields() -> Fields {
    Fields::from(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("y", DataType::Float64, false),
        Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
    ])
}

fn point(x: f64, y: f64, tags: &[&str]) -> (Field, ArrayRef) {
    let mut list = ListBuilder::new(StringBuilder::new());
    for tag in tags {
        list.values().append_value(tag);
    }
    list.append(true);
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![x])),
        Arc::new(Float64Array::from(vec![y])),
        Arc::new(list.finish()),
    ];
    let fields = point_fields();
    let array = StructArray::new(fields.clone(), arrays, None);
    (Field::new("p", DataType::Struct(fields), false), Arc::new(array))
}

fn int64(name: &str, v: i64) -> (Field, ArrayRef) {
    (Field::new(name, DataType::Int64, false), Arc::new(Int64Array::from(vec![v])))
}

fn float64(name: &str, v: f64) -> (Field, ArrayRef) {
    (Field::new(name, DataType::Float64, false), Arc::new(Float64Array::from(vec![v])))
}

fn utf8(name: &str, v: Option<&str>, nullable: bool) -> (Field, ArrayRef) {
    (Field::new(name, DataType::Utf8, nullable), Arc::new(StringArray::from(vec![v])))
}

fn strings(list: &ListArray, row: usize) -> Vec<String> {
    let values = list.value(row);
    let values = values.as_any().downcast_ref::<StringArray>().expect("list<utf8>");
    values.iter().map(|v| v.unwrap_or("").to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Errors (§9)
// ---------------------------------------------------------------------------------------------

/// The first JSON object in a status message (clients may append text after it, §9).
fn error_json(status: &tonic::Status) -> Res<Value> {
    let msg = status.message();
    let start = msg.find('{').ok_or_else(|| format!("error message is not JSON: {msg:?}"))?;
    let mut values = serde_json::Deserializer::from_str(&msg[start..]).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => Ok(v),
        _ => Err(format!("error message is not JSON: {msg:?}").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Unary calls (§4)
// ---------------------------------------------------------------------------------------------

/// `DoAction(method, body)`: returns the log records and the decoded `result` batch (the last Result).
async fn do_action(client: &mut Client, signer: &Signer, method: &str, body: Vec<u8>)
    -> Result<(Vec<Value>, RecordBatch), tonic::Status> {
    // DoAction payload (§11.1): action type, a line feed, then the body.
    let mut payload = method.as_bytes().to_vec();
    payload.push(b'\n');
    payload.extend_from_slice(&body);
    let req = signer
        .request(Action::new(method, body), "DoAction", &payload)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut stream = client.do_action(req).await?.into_inner();
    let mut results = Vec::new();
    while let Some(r) = stream.next().await {
        results.push(r?.body);
    }
    let bad = |m: String| tonic::Status::internal(format!("client check failed: {m}"));
    let last = results.pop().ok_or_else(|| bad(format!("{method}: no Result")))?;
    let mut logs = Vec::new();
    for r in results {
        // Every Result but the last is a log record, a JSON object (§4, §6.3).
        check_or_status(r.first() == Some(&b'{'), || bad(format!("{method}: non-log Result before the last")))?;
        logs.push(serde_json::from_slice(&r).map_err(|e| bad(e.to_string()))?);
    }
    let batch = read_one_batch(&last, method).map_err(|e| bad(e.to_string()))?;
    Ok((logs, batch))
}

fn check_or_status(ok: bool, err: impl FnOnce() -> tonic::Status) -> Result<(), tonic::Status> {
    if ok { Ok(()) } else { Err(err()) }
}

/// A unary call that must succeed and return a one-row batch with a `result` column.
async fn unary(client: &mut Client, signer: &Signer, method: &str, args: Vec<(Field, ArrayRef)>) -> Res<RecordBatch> {
    let body = call_request(method, args)?;
    let (_, batch) = do_action(client, signer, method, body)
        .await
        .map_err(|s| format!("{method}: call failed: {:?} {}", s.code(), s.message()))?;
    // A method returning nothing answers "one batch with no columns" (§4) of unspecified row count.
    check!(batch.num_rows() == 1 || batch.num_columns() == 0, "{method}: result has {} rows, want 1", batch.num_rows());
    Ok(batch)
}

async fn check_unary(client: &mut Client, signer: &Signer) -> Res<()> {
    // add(a=2, b=40) = 42
    let r = unary(client, signer, "add", vec![int64("a", 2), int64("b", 40)]).await?;
    let v = column::<Int64Array>(&r, "result")?.value(0);
    check!(v == 42, "add(2, 40) = {v}, want 42");

    // describe_point with label null, then with label "P"
    for (label, want) in [(None, "point:1.5,-2:2"), (Some("P"), "P:1.5,-2:2")] {
        let args = vec![point(1.5, -2.0, &["a", "b"]), utf8("label", label, true)];
        let r = unary(client, signer, "describe_point", args).await?;
        let v = column::<StringArray>(&r, "result")?.value(0);
        check!(v == want, "describe_point(label={label:?}) = {v:?}, want {want:?}");
    }

    // scale(p={1, 2, ["t"]}, factor=2.5) = {2.5, 5.0, ["t"]}
    let r = unary(client, signer, "scale", vec![point(1.0, 2.0, &["t"]), float64("factor", 2.5)]).await?;
    let p = column::<StructArray>(&r, "result")?;
    let x = p.column_by_name("x").and_then(|c| c.as_any().downcast_ref::<Float64Array>()).ok_or("scale: no float64 x")?;
    let y = p.column_by_name("y").and_then(|c| c.as_any().downcast_ref::<Float64Array>()).ok_or("scale: no float64 y")?;
    let tags = p.column_by_name("tags").and_then(|c| c.as_any().downcast_ref::<ListArray>()).ok_or("scale: no list tags")?;
    let got = (x.value(0), y.value(0), strings(tags, 0));
    check!(got == (2.5, 5.0, vec!["t".to_string()]), "scale = {got:?}, want (2.5, 5.0, [\"t\"])");

    // noop() answers the empty schema (§4)
    let r = unary(client, signer, "noop", vec![]).await?;
    check!(r.num_columns() == 0, "noop: result schema {:?}, want empty", r.schema());

    // fail(message="boom") -> JSON error, code UNKNOWN (both JSON and gRPC, §9)
    let body = call_request("fail", vec![utf8("message", Some("boom"), false)])?;
    match do_action(client, signer, "fail", body).await {
        Ok(_) => return Err("fail(): succeeded, want an error".into()),
        Err(status) => {
            let e = error_json(&status)?;
            check!(status.code() == tonic::Code::Unknown, "fail(): gRPC code {:?}, want Unknown", status.code());
            check!(e["vgi_error"] == 1, "fail(): vgi_error = {}, want 1", e["vgi_error"]);
            check!(e["code"] == "UNKNOWN", "fail(): code = {}, want UNKNOWN", e["code"]);
            check!(e["error_type"] == "ValueError", "fail(): error_type = {}, want ValueError", e["error_type"]);
            check!(e["error_message"] == "boom", "fail(): error_message = {}, want boom", e["error_message"]);
        }
    }

    // whoami() = the principal of our HMAC key / client certificate
    let r = unary(client, signer, "whoami", vec![]).await?;
    let v = column::<StringArray>(&r, "result")?.value(0);
    check!(v == "interop-client", "whoami() = {v:?}, want \"interop-client\"");

    // add signed with a wrong secret -> UNAUTHENTICATED (§11.4)
    let wrong = Signer { kid: signer.kid.clone(), secret: vec![0x55; 32] };
    let body = call_request("add", vec![int64("a", 2), int64("b", 40)])?;
    match do_action(client, &wrong, "add", body).await {
        Ok(_) => return Err("add with a wrong secret: succeeded, want UNAUTHENTICATED".into()),
        Err(status) => {
            check!(
                status.code() == tonic::Code::Unauthenticated,
                "add with a wrong secret: gRPC {:?} {}, want Unauthenticated", status.code(), status.message()
            );
            let e = error_json(&status)?;
            check!(e["code"] == "UNAUTHENTICATED", "wrong secret: code = {}", e["code"]);
            check!(e["error_message"] == "authentication failed", "wrong secret: error_message = {}", e["error_message"]);
        }
    }
    println!("unary: ok");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stream messages (§6)
// ---------------------------------------------------------------------------------------------

/// One logical server message of a stream, after `data_part` reassembly (§6.4).
#[derive(Debug)]
enum Msg {
    Ready(Value),
    Log(Value),
    /// A whole data batch; `parts` counts the messages it arrived in (1 = not sliced).
    Data { meta: Value, batch: RecordBatch, parts: usize },
    /// The server ended the call with OK.
    End,
}

/// Reads the response of a DoGet/DoExchange message by message, using each message's app_metadata.
struct MsgReader {
    decoder: FlightDataDecoder,
    schema: Option<SchemaRef>,
}

impl MsgReader {
    fn new(decoder: FlightDataDecoder) -> Self {
        Self { decoder, schema: None }
    }

    async fn next(&mut self) -> Res<Msg> {
        let mut slices: Vec<RecordBatch> = Vec::new();
        let mut part_seq: Option<u64> = None;
        loop {
            let Some(decoded) = self.decoder.next().await else {
                check!(slices.is_empty(), "stream ended inside data batch {part_seq:?}");
                return Ok(Msg::End);
            };
            let decoded = decoded.map_err(|e| match e {
                FlightError::Tonic(s) => format!("stream failed: {:?} {}", s.code(), s.message()),
                e => format!("stream failed: {e}"),
            })?;
            let batch = match decoded.payload {
                // The schema message starts the stream; it carries no vgi metadata.
                DecodedPayload::Schema(s) => {
                    self.schema = Some(s);
                    continue;
                }
                DecodedPayload::RecordBatch(b) => Some(b),
                DecodedPayload::None => None,
            };
            let raw = decoded.inner.app_metadata;
            check!(!raw.is_empty(), "a stream message without app_metadata (every message must carry it, §5.2)");
            let meta: Value = serde_json::from_slice(&raw)?;
            let kind = meta["kind"].as_str().unwrap_or_default().to_string();
            let rows = batch.as_ref().map_or(0, |b| b.num_rows());
            match kind.as_str() {
                "ready" | "log" => {
                    check!(rows == 0, "{kind} message with {rows} rows, want a zero-row batch");
                    check!(slices.is_empty(), "{kind} message inside data batch {part_seq:?}");
                    return Ok(if kind == "ready" { Msg::Ready(meta) } else { Msg::Log(meta) });
                }
                "data_part" | "data" => {
                    let seq = meta["seq"].as_u64().ok_or_else(|| format!("{kind} without integer seq: {meta}"))?;
                    check!(part_seq.is_none_or(|s| s == seq), "{kind} seq {seq} inside data batch {part_seq:?}");
                    part_seq = Some(seq);
                    slices.push(batch.ok_or_else(|| format!("{kind} message without a record batch"))?);
                    if kind == "data" {
                        // The logical batch is the concatenation of the slices in order (§6.4).
                        let schema = slices[0].schema();
                        let parts = slices.len();
                        let batch = arrow_select::concat::concat_batches(&schema, &slices)?;
                        return Ok(Msg::Data { meta, batch, parts });
                    }
                }
                // Unknown zero-row kinds are ignored (§6).
                _ if rows == 0 => continue,
                other => return Err(format!("unknown message kind {other:?} with {rows} rows").into()),
            }
        }
    }
}

/// `GetFlightInfo(CMD call request)` and the vgi app_metadata (§5.1).
async fn get_flight_info(client: &mut Client, signer: &Signer, cmd: Vec<u8>) -> Res<(FlightInfo, Value)> {
    let req = signer.request(FlightDescriptor::new_cmd(cmd.clone()), "GetFlightInfo", &cmd)?;
    let info = client
        .get_flight_info(req)
        .await
        .map_err(|s| format!("GetFlightInfo failed: {:?} {}", s.code(), s.message()))?
        .into_inner();
    let meta: Value = serde_json::from_slice(&info.app_metadata)?;
    check!(meta["seq"] == 0, "FlightInfo app_metadata seq = {}, want 0", meta["seq"]);
    check!(info.endpoint.len() == 1, "FlightInfo has {} endpoints, want 1", info.endpoint.len());
    check!(info.endpoint[0].location.is_empty(), "FlightInfo endpoint has locations, want none");
    check!(info.endpoint[0].ticket.is_some(), "FlightInfo endpoint has no ticket");
    Ok((info, meta))
}

fn decode_header(meta: &Value) -> Res<RecordBatch> {
    let b64 = meta["header"].as_str().ok_or("FlightInfo app_metadata has no header")?;
    let header = read_one_batch(&B64.decode(b64)?, "header")?;
    check!(header.num_rows() == 1, "header has {} rows, want 1", header.num_rows());
    Ok(header)
}

fn int_column(batch: &RecordBatch, name: &str) -> Res<Vec<i64>> {
    Ok(column::<Int64Array>(batch, name)?.values().to_vec())
}

// ---------------------------------------------------------------------------------------------
// Producer stream (§5.1, §5.2)
// ---------------------------------------------------------------------------------------------

async fn check_producer(client: &mut Client, signer: &Signer) -> Res<()> {
    let cmd = call_request("generate", vec![int64("count", 4), int64("big_rows", 300_000)])?;
    let (info, meta) = get_flight_info(client, signer, cmd).await?;
    check!(meta["kind"] == "producer", "generate: kind = {}, want producer", meta["kind"]);
    let header = decode_header(&meta)?;
    let count = column::<Int64Array>(&header, "count")?.value(0);
    let label = column::<StringArray>(&header, "label")?.value(0);
    check!((count, label) == (4, "generate 4"), "generate header = ({count}, {label:?}), want (4, \"generate 4\")");
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let schema = info.try_decode_schema()?;
    let fields: Vec<_> = schema.fields().iter().map(|f| (f.name().as_str(), f.data_type().clone())).collect();
    check!(fields == vec![("i", DataType::Int64), ("text", DataType::Utf8)],
        "generate output schema = {fields:?}, want {{i: int64, text: utf8}}");

    let req = signer.request(Ticket::new(ticket.ticket.clone()), "DoGet", &ticket.ticket)?;
    let response = client
        .do_get(req)
        .await
        .map_err(|s| format!("DoGet failed: {:?} {}", s.code(), s.message()))?
        .into_inner();
    let mut reader = MsgReader::new(FlightDataDecoder::new(response.map(|r| r.map_err(FlightError::from))));

    match reader.next().await? {
        Msg::Ready(m) => check!(m["seq"] == 0, "DoGet ready seq = {}, want 0", m["seq"]),
        other => return Err(format!("DoGet: first message {other:?}, want ready").into()),
    }
    let mut seen = 0u64;
    loop {
        match reader.next().await? {
            Msg::Log(_) => continue,
            Msg::Data { meta, batch, parts } => {
                seen += 1;
                check!(meta["seq"] == seen, "DoGet data seq = {}, want {seen}", meta["seq"]);
                check!(meta["token"].is_string(), "DoGet data {seen} has no token");
                let want: Vec<i64> = if seen == 2 { (0..300_000).collect() } else {
                    let k = seen as i64 - 1;
                    (10 * k..10 * k + 10).collect()
                };
                let got = int_column(&batch, "i")?;
                check!(got == want, "DoGet batch {seen}: i has {} rows [{:?}..], want {} rows [{:?}..]",
                    got.len(), got.first(), want.len(), want.first());
                let text = column::<StringArray>(&batch, "text")?;
                for (n, i) in want.iter().enumerate() {
                    check!(text.value(n) == format!("row-{i}"), "DoGet batch {seen}: text[{n}] = {:?}", text.value(n));
                }
                if seen == 2 {
                    // The big batch exceeds the 4 MiB receive limit, so it must have been sliced (§5.2).
                    check!(parts > 1, "DoGet batch 2 arrived in {parts} message(s), want data_part slices");
                    println!("producer: batch 2 reassembled from {parts} messages");
                }
            }
            Msg::End => break,
            Msg::Ready(m) => return Err(format!("DoGet: second ready {m}").into()),
        }
    }
    check!(seen == 4, "DoGet: {seen} data batches, want 4");
    println!("producer: ok");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Exchange stream (§5.1, §5.3)
// ---------------------------------------------------------------------------------------------

/// An open `DoExchange`: a channel feeding the request stream, and the response reader.
struct Exchange {
    tx: futures::channel::mpsc::UnboundedSender<FlightData>,
    reader: MsgReader,
    input_schema: Schema,
}

impl Exchange {
    /// Open a DoExchange whose first message carries `FlightDescriptor{CMD: token}` and the input schema.
    async fn open(client: &mut Client, signer: &Signer, token: &[u8], input_schema: &Schema) -> Res<Self> {
        let (tx, rx) = futures::channel::mpsc::unbounded::<FlightData>();
        // The server needs the descriptor before it answers, so queue the first message before the call.
        let schema_msg = arrow_flight::utils::batches_to_flight_data(input_schema, [])?
            .remove(0)
            .with_descriptor(FlightDescriptor::new_cmd(token.to_vec()));
        tx.unbounded_send(schema_msg)?;
        let req = signer.request(rx, "DoExchange", token)?;
        let response = client
            .do_exchange(req)
            .await
            .map_err(|s| format!("DoExchange failed: {:?} {}", s.code(), s.message()))?
            .into_inner();
        let reader = MsgReader::new(FlightDataDecoder::new(response.map(|r| r.map_err(FlightError::from))));
        Ok(Self { tx, reader, input_schema: input_schema.clone() })
    }

    fn send(&self, values: Vec<f64>) -> Res<()> {
        let batch = RecordBatch::try_new(Arc::new(self.input_schema.clone()), vec![Arc::new(Float64Array::from(values))])?;
        // Skip the schema message: it was sent with the descriptor.
        for msg in arrow_flight::utils::batches_to_flight_data(&self.input_schema, [&batch])?.into_iter().skip(1) {
            self.tx.unbounded_send(msg)?;
        }
        Ok(())
    }

    /// One turn: send a batch, then expect log `turn <n>` and data {total, turns} with seq n.
    async fn turn(&mut self, values: Vec<f64>, n: i64, total: f64) -> Res<String> {
        self.send(values)?;
        match self.reader.next().await? {
            Msg::Log(m) => {
                check!(m["message"] == format!("turn {n}"), "exchange turn {n}: log message = {}", m["message"]);
                check!(m["level"] == "INFO", "exchange turn {n}: log level = {}", m["level"]);
            }
            other => return Err(format!("exchange turn {n}: got {other:?}, want log").into()),
        }
        match self.reader.next().await? {
            Msg::Data { meta, batch, .. } => {
                check!(meta["seq"] == n, "exchange turn {n}: data seq = {}, want {n}", meta["seq"]);
                let got_total = column::<Float64Array>(&batch, "total")?.values().to_vec();
                let got_turns = int_column(&batch, "turns")?;
                check!(got_total == vec![total] && got_turns == vec![n],
                    "exchange turn {n}: data = {got_total:?}/{got_turns:?}, want [{total}]/[{n}]");
                Ok(meta["token"].as_str().ok_or("exchange data without token")?.to_string())
            }
            other => Err(format!("exchange turn {n}: got {other:?}, want data").into()),
        }
    }

    /// Half-close our side; the server must end the call with OK.
    async fn close(mut self) -> Res<()> {
        self.tx.close_channel();
        match self.reader.next().await? {
            Msg::End => Ok(()),
            other => Err(format!("exchange close: got {other:?}, want end of stream").into()),
        }
    }
}

async fn check_exchange(client: &mut Client, signer: &Signer) -> Res<()> {
    let cmd = call_request("accumulate", vec![float64("start", 1.0)])?;
    let (info, meta) = get_flight_info(client, signer, cmd).await?;
    check!(meta["kind"] == "exchange", "accumulate: kind = {}, want exchange", meta["kind"]);
    let header = decode_header(&meta)?;
    let start = column::<Float64Array>(&header, "start")?.value(0);
    check!(start == 1.0, "accumulate header start = {start}, want 1.0");
    let input_schema_ipc = B64.decode(meta["input_schema"].as_str().ok_or("accumulate: no input_schema")?)?;
    let input_schema = arrow_ipc::convert::try_schema_from_ipc_buffer(&input_schema_ipc)?;
    let fields: Vec<_> = input_schema.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect();
    check!(fields == vec![("value".to_string(), DataType::Float64)], "accumulate input_schema = {fields:?}, want {{value: float64}}");

    let token = info.endpoint[0].ticket.clone().unwrap().ticket;
    let mut ex = Exchange::open(client, signer, &token, &input_schema).await?;
    match ex.reader.next().await? {
        Msg::Ready(m) => check!(m["seq"] == 0, "exchange ready seq = {}, want 0", m["seq"]),
        other => return Err(format!("exchange: first message {other:?}, want ready").into()),
    }
    ex.turn(vec![1.0, 2.0], 1, 4.0).await?;
    let token = ex.turn(vec![3.0], 2, 7.0).await?;
    ex.close().await?;

    // Resume from the token of the last data message: the stream continues at seq 3 (§3).
    let mut ex = Exchange::open(client, signer, &B64.decode(token)?, &input_schema).await?;
    match ex.reader.next().await? {
        Msg::Ready(m) => check!(m["seq"] == 2, "resumed exchange ready seq = {}, want 2", m["seq"]),
        other => return Err(format!("resumed exchange: first message {other:?}, want ready").into()),
    }
    ex.turn(vec![10.0], 3, 17.0).await?;
    ex.close().await?;
    println!("exchange: ok");
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn env(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("environment variable {name} is not set").into())
}

async fn connect() -> Res<Client> {
    // VGI_LOCATION is a Flight URI (grpc+tls://host:port); tonic wants https://host:port.
    let location = env("VGI_LOCATION")?;
    let addr = location
        .strip_prefix("grpc+tls://")
        .ok_or_else(|| format!("VGI_LOCATION {location:?} is not grpc+tls://"))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(env("VGI_CA")?)?))
        .identity(Identity::from_pem(std::fs::read(env("VGI_CERT")?)?, std::fs::read(env("VGI_KEY")?)?))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
    // The default 4 MiB receive limit is kept on purpose: the server must slice big batches.
    Ok(FlightServiceClient::new(channel))
}

async fn run() -> Res<()> {
    check_worked_example()?;
    let signer = Signer { kid: env("VGI_HMAC_KID")?, secret: hex::decode(env("VGI_HMAC_SECRET_HEX")?)? };
    let mut client = connect().await?;
    check_unary(&mut client, &signer).await?;
    check_producer(&mut client, &signer).await?;
    check_exchange(&mut client, &signer).await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match run().await {
        Ok(()) => println!("INTEROP OK rust"),
        Err(e) => {
            eprintln!("INTEROP FAILED rust: {e}");
            std::process::exit(1);
        }
    }
}
