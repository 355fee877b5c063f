package vgi.interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.InputStream;
import java.net.URI;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import java.util.function.Function;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.apache.arrow.flight.Action;
import org.apache.arrow.flight.FlightCallHeaders;
import org.apache.arrow.flight.FlightClient;
import org.apache.arrow.flight.FlightDescriptor;
import org.apache.arrow.flight.FlightEndpoint;
import org.apache.arrow.flight.FlightInfo;
import org.apache.arrow.flight.FlightRuntimeException;
import org.apache.arrow.flight.FlightStatusCode;
import org.apache.arrow.flight.FlightStream;
import org.apache.arrow.flight.HeaderCallOption;
import org.apache.arrow.flight.Location;
import org.apache.arrow.flight.Result;
import org.apache.arrow.flight.Ticket;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.Float8Vector;
import org.apache.arrow.vector.VarCharVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.ListVector;
import org.apache.arrow.vector.complex.StructVector;
import org.apache.arrow.vector.ipc.ArrowStreamReader;
import org.apache.arrow.vector.ipc.ArrowStreamWriter;
import org.apache.arrow.vector.ipc.ReadChannel;
import org.apache.arrow.vector.ipc.message.MessageSerializer;
import org.apache.arrow.vector.types.FloatingPointPrecision;
import org.apache.arrow.vector.types.pojo.ArrowType;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.FieldType;
import org.apache.arrow.vector.types.pojo.Schema;

/**
 * vgi-flight interop client written from docs/wire-protocol.md alone, on the official Arrow Flight
 * Java library. Calls the interop service (tests/interop/service.py) over mTLS with HMAC-signed
 * requests and checks every expectation of tests/interop/README.md.
 */
public final class InteropClient {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final SecureRandom RANDOM = new SecureRandom();
  private static final HexFormat HEX = HexFormat.of(); // lowercase, as §11.1 requires for digest

  // gRPC's default receive limit. Arrow Java raises it to Integer.MAX_VALUE by default; we set it
  // back so that the test proves the server slices big batches (wire-protocol §5.2, §6.4).
  private static final int GRPC_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024;

  private static final ArrowType INT64 = new ArrowType.Int(64, true);
  private static final ArrowType FLOAT64 = new ArrowType.FloatingPoint(FloatingPointPrecision.DOUBLE);
  private static final ArrowType UTF8 = ArrowType.Utf8.INSTANCE;

  private final BufferAllocator allocator;
  private final FlightClient client;
  private final String kid;
  private final byte[] secret;

  private InteropClient(BufferAllocator allocator, FlightClient client, String kid, byte[] secret) {
    this.allocator = allocator;
    this.client = client;
    this.kid = kid;
    this.secret = secret;
  }

  public static void main(String[] args) {
    try {
      run();
    } catch (Throwable t) {
      System.err.println("INTEROP FAILED java: " + t);
      t.printStackTrace();
      System.exit(1);
    }
    System.out.println("INTEROP OK java");
    // gRPC/Netty threads must not keep the JVM alive.
    System.exit(0);
  }

  private static void run() throws Exception {
    checkWorkedExample();
    URI location = new URI(env("VGI_LOCATION")); // grpc+tls://127.0.0.1:<port>
    byte[] secret = HEX.parseHex(env("VGI_HMAC_SECRET_HEX"));
    try (BufferAllocator allocator = new RootAllocator();
        InputStream ca = new FileInputStream(env("VGI_CA"));
        InputStream cert = new FileInputStream(env("VGI_CERT"));
        InputStream key = new FileInputStream(env("VGI_KEY"))) {
      FlightClient client =
          FlightClient.builder(allocator, Location.forGrpcTls(location.getHost(), location.getPort()))
              .trustedCertificates(ca)
              .clientCertificate(cert, key)
              // Connect to the listening address but verify the certificate against "localhost".
              .overrideHostname("localhost")
              .maxInboundMessageSize(GRPC_DEFAULT_MAX_RECEIVE)
              .build();
      try (client) {
        InteropClient c = new InteropClient(allocator, client, env("VGI_HMAC_KID"), secret);
        c.unary();
        c.producer();
        c.exchange();
      }
    }
  }

  private static String env(String name) {
    String v = System.getenv(name);
    if (v == null || v.isEmpty()) {
      throw new IllegalStateException("environment variable " + name + " is not set");
    }
    return v;
  }

  private static void check(boolean ok, String what) {
    if (!ok) {
      throw new IllegalStateException("MISMATCH: " + what);
    }
  }

  private static void checkEq(Object expected, Object actual, String what) {
    check(expected.equals(actual), what + ": expected <" + expected + "> got <" + actual + ">");
  }

  // ---------------------------------------------------------------- HMAC signing (§11.1)

  static String authorization(
      String kid, byte[] secret, String rpc, byte[] payload, long ts, String nonce) throws Exception {
    String digest = HEX.formatHex(MessageDigest.getInstance("SHA-256").digest(payload));
    String stringToSign = String.join("\n", "VGI-HMAC-SHA256", kid, Long.toString(ts), nonce, rpc, digest);
    Mac mac = Mac.getInstance("HmacSHA256");
    mac.init(new SecretKeySpec(secret, "HmacSHA256"));
    String sig = Base64.getEncoder().encodeToString(mac.doFinal(stringToSign.getBytes(StandardCharsets.UTF_8)));
    return "VGI-HMAC-SHA256 kid=" + kid + ", ts=" + ts + ", nonce=" + nonce + ", digest=" + digest + ", sig=" + sig;
  }

  /** The worked example of §11.5, so a signing bug shows up as itself and not as UNAUTHENTICATED. */
  private static void checkWorkedExample() throws Exception {
    byte[] secret = HEX.parseHex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
    String got =
        authorization(
            "k-demo", secret, "DoAction", actionPayload("whoami", new byte[0]), 1700000000L,
            "0123456789abcdef01234567");
    checkEq(
        "VGI-HMAC-SHA256 kid=k-demo, ts=1700000000, nonce=0123456789abcdef01234567, "
            + "digest=33e7267d8409d63707706f95f3d67ee9be5fd3a2c6ffc60856c9baeca1ae3ed4, "
            + "sig=ppQuvJURVrutnPMzbu/15Em8+HezlJuLGe+DJ+t0ZQQ=",
        got, "§11.5 worked example");
  }

  /** DoAction payload: action type, a line feed, then the body. */
  private static byte[] actionPayload(String type, byte[] body) {
    byte[] t = (type + "\n").getBytes(StandardCharsets.UTF_8);
    byte[] out = new byte[t.length + body.length];
    System.arraycopy(t, 0, out, 0, t.length);
    System.arraycopy(body, 0, out, t.length, body.length);
    return out;
  }

  /** A fresh header per call: the signature covers this call's payload, and nonces are single-use. */
  private HeaderCallOption signed(String rpc, byte[] payload, byte[] key) throws Exception {
    byte[] nonce = new byte[12];
    RANDOM.nextBytes(nonce);
    FlightCallHeaders headers = new FlightCallHeaders();
    headers.insert(
        "authorization",
        authorization(kid, key, rpc, payload, System.currentTimeMillis() / 1000, HEX.formatHex(nonce)));
    return new HeaderCallOption(headers);
  }

  private HeaderCallOption signed(String rpc, byte[] payload) throws Exception {
    return signed(rpc, payload, secret);
  }

  // ---------------------------------------------------------------- IPC helpers

  /** A call request (§2): IPC stream, schema metadata vgi.method, exactly one one-row batch. */
  private byte[] request(String method, List<Field> fields, Consumer<VectorSchemaRoot> fill) throws Exception {
    Schema schema = new Schema(fields, Map.of("vgi.method", method, "vgi.version", "1"));
    try (VectorSchemaRoot root = VectorSchemaRoot.create(schema, allocator)) {
      root.allocateNew();
      fill.accept(root);
      root.setRowCount(1);
      ByteArrayOutputStream out = new ByteArrayOutputStream();
      try (ArrowStreamWriter writer = new ArrowStreamWriter(root, null, out)) {
        writer.start();
        writer.writeBatch();
        writer.end();
      }
      return out.toByteArray();
    }
  }

  /** Reads an IPC stream that must hold exactly one batch and extracts values before it is freed. */
  private <T> T readSingleBatch(byte[] ipc, Function<VectorSchemaRoot, T> extract) throws Exception {
    try (ArrowStreamReader reader = new ArrowStreamReader(new ByteArrayInputStream(ipc), allocator)) {
      check(reader.loadNextBatch(), "IPC stream has no batch");
      T value = extract.apply(reader.getVectorSchemaRoot());
      check(!reader.loadNextBatch(), "IPC stream has more than one batch");
      return value;
    }
  }

  private static Schema readIpcSchema(byte[] bytes) throws Exception {
    return MessageSerializer.deserializeSchema(
        new ReadChannel(Channels.newChannel(new ByteArrayInputStream(bytes))));
  }

  private static Field pointField() {
    Field tags =
        new Field("tags", FieldType.notNullable(new ArrowType.List()), List.of(Field.nullable("item", UTF8)));
    return new Field(
        "p",
        FieldType.notNullable(ArrowType.Struct.INSTANCE),
        List.of(Field.notNullable("x", FLOAT64), Field.notNullable("y", FLOAT64), tags));
  }

  private static void setPoint(VectorSchemaRoot root, double x, double y, List<String> tags) {
    StructVector p = (StructVector) root.getVector("p");
    ((Float8Vector) p.getChild("x")).setSafe(0, x);
    ((Float8Vector) p.getChild("y")).setSafe(0, y);
    ListVector list = (ListVector) p.getChild("tags");
    VarCharVector items = (VarCharVector) list.getDataVector();
    int start = list.startNewValue(0);
    for (int i = 0; i < tags.size(); i++) {
      items.setSafe(start + i, tags.get(i).getBytes(StandardCharsets.UTF_8));
    }
    list.endValue(0, tags.size());
    p.setIndexDefined(0);
  }

  private static JsonNode metadataJson(byte[] bytes, String where) throws Exception {
    check(bytes != null && bytes.length > 0, where + ": missing app_metadata");
    JsonNode node = JSON.readTree(bytes);
    check(node.isObject(), where + ": app_metadata is not a JSON object: " + new String(bytes, StandardCharsets.UTF_8));
    return node;
  }

  private static JsonNode metadataJson(ArrowBuf buf, String where) throws Exception {
    check(buf != null, where + ": message without app_metadata");
    byte[] bytes = new byte[(int) buf.readableBytes()];
    buf.getBytes(buf.readerIndex(), bytes);
    return metadataJson(bytes, where);
  }

  /** §9: the status message is a JSON object, possibly followed by text; parse the first object. */
  private static JsonNode errorJson(FlightRuntimeException e) throws Exception {
    String message = e.status().description();
    int brace = message == null ? -1 : message.indexOf('{');
    check(brace >= 0, "error message is not JSON: " + message);
    return JSON.readTree(JSON.getFactory().createParser(message.substring(brace)));
  }

  // ---------------------------------------------------------------- unary (§4)

  /** DoAction; every Result but the last is a log record (JSON object), the last is the value. */
  private byte[] doAction(String method, byte[] body, byte[] key) throws Exception {
    Iterator<Result> results =
        client.doAction(new Action(method, body), signed("DoAction", actionPayload(method, body), key));
    List<byte[]> bodies = new ArrayList<>();
    results.forEachRemaining(r -> bodies.add(r.getBody()));
    check(!bodies.isEmpty(), method + ": no Result");
    for (byte[] log : bodies.subList(0, bodies.size() - 1)) {
      check(log.length > 0 && log[0] == '{', method + ": non-final Result is not a log record");
      check(metadataJson(log, method + " log").has("level"), method + ": log record without level");
    }
    return bodies.get(bodies.size() - 1);
  }

  private byte[] doAction(String method, byte[] body) throws Exception {
    return doAction(method, body, secret);
  }

  private Object unaryResult(String method, byte[] body) throws Exception {
    return readSingleBatch(
        doAction(method, body),
        root -> {
          check(root.getRowCount() == 1, method + ": result has " + root.getRowCount() + " rows");
          check(root.getFieldVectors().size() == 1, method + ": result has not exactly one column");
          check(root.getVector("result") != null, method + ": result column not named 'result'");
          Object v = root.getVector("result").getObject(0);
          // Copy out of Arrow memory (Text, JsonStringHashMap) before the batch is freed.
          return v instanceof Map || v instanceof List ? JSON.valueToTree(plain(v)) : plain(v);
        });
  }

  /** Arrow Java returns Text for utf8 and nested maps/lists of them; turn it into plain Java values. */
  private static Object plain(Object v) {
    if (v instanceof org.apache.arrow.vector.util.Text) {
      return v.toString();
    }
    if (v instanceof Map<?, ?> m) {
      Map<String, Object> out = new java.util.LinkedHashMap<>();
      m.forEach((k, x) -> out.put(k.toString(), plain(x)));
      return out;
    }
    if (v instanceof List<?> l) {
      return l.stream().map(InteropClient::plain).toList();
    }
    return v;
  }

  private void unary() throws Exception {
    byte[] add =
        request(
            "add",
            List.of(Field.notNullable("a", INT64), Field.notNullable("b", INT64)),
            root -> {
              ((BigIntVector) root.getVector("a")).setSafe(0, 2);
              ((BigIntVector) root.getVector("b")).setSafe(0, 40);
            });
    checkEq(42L, unaryResult("add", add), "add(2, 40)");

    List<Field> describeFields = List.of(pointField(), Field.nullable("label", UTF8));
    byte[] describeNull =
        request(
            "describe_point",
            describeFields,
            root -> {
              setPoint(root, 1.5, -2.0, List.of("a", "b"));
              ((VarCharVector) root.getVector("label")).setNull(0);
            });
    checkEq("point:1.5,-2:2", unaryResult("describe_point", describeNull), "describe_point(label=null)");

    byte[] describeP =
        request(
            "describe_point",
            describeFields,
            root -> {
              setPoint(root, 1.5, -2.0, List.of("a", "b"));
              ((VarCharVector) root.getVector("label")).setSafe(0, "P".getBytes(StandardCharsets.UTF_8));
            });
    checkEq("P:1.5,-2:2", unaryResult("describe_point", describeP), "describe_point(label='P')");

    byte[] scale =
        request(
            "scale",
            List.of(pointField(), Field.notNullable("factor", FLOAT64)),
            root -> {
              setPoint(root, 1.0, 2.0, List.of("t"));
              ((Float8Vector) root.getVector("factor")).setSafe(0, 2.5);
            });
    checkEq(
        JSON.readTree("{\"x\": 2.5, \"y\": 5.0, \"tags\": [\"t\"]}"),
        unaryResult("scale", scale),
        "scale(p, 2.5)");

    // A method without result answers an IPC stream of the empty schema with one batch.
    byte[] noop = request("noop", List.of(), root -> {});
    int noopColumns = readSingleBatch(doAction("noop", noop), root -> root.getSchema().getFields().size());
    checkEq(0, noopColumns, "noop() result schema field count");

    byte[] fail =
        request(
            "fail",
            List.of(Field.notNullable("message", UTF8)),
            root -> ((VarCharVector) root.getVector("message")).setSafe(0, "boom".getBytes(StandardCharsets.UTF_8)));
    try {
      doAction("fail", fail);
      check(false, "fail('boom') did not raise");
    } catch (FlightRuntimeException e) {
      // §9: codes other than the listed few travel as gRPC UNKNOWN; branch on the JSON code.
      checkEq(FlightStatusCode.UNKNOWN, e.status().code(), "fail: gRPC status");
      JsonNode err = errorJson(e);
      checkEq(1, err.path("vgi_error").asInt(), "fail: vgi_error");
      checkEq("UNKNOWN", err.path("code").asText(), "fail: code");
      checkEq("ValueError", err.path("error_type").asText(), "fail: error_type");
      checkEq("boom", err.path("error_message").asText(), "fail: error_message");
    }

    byte[] whoami = request("whoami", List.of(), root -> {});
    checkEq("interop-client", unaryResult("whoami", whoami), "whoami()");

    // Signed with a wrong secret: the server must refuse the call (§11.4).
    byte[] wrong = secret.clone();
    wrong[0] ^= 0x55;
    try {
      doAction("add", add, wrong);
      check(false, "add signed with a wrong secret was accepted");
    } catch (FlightRuntimeException e) {
      checkEq(FlightStatusCode.UNAUTHENTICATED, e.status().code(), "wrong secret: gRPC status");
      JsonNode err = errorJson(e);
      checkEq("UNAUTHENTICATED", err.path("code").asText(), "wrong secret: code");
      checkEq("authentication failed", err.path("error_message").asText(), "wrong secret: error_message");
    }
    System.out.println("unary: ok");
  }

  // ---------------------------------------------------------------- streams (§5)

  /** GetFlightInfo (§5.1): checks the common app_metadata keys and returns it with the ticket. */
  private record Started(JsonNode metadata, byte[] ticket, Schema schema) {}

  private Started getFlightInfo(byte[] request, String kind) throws Exception {
    FlightInfo info = client.getInfo(FlightDescriptor.command(request), signed("GetFlightInfo", request));
    JsonNode md = metadataJson(info.getAppMetadata(), "FlightInfo");
    checkEq(kind, md.path("kind").asText(), "FlightInfo kind");
    checkEq(0, md.path("seq").asInt(-1), "FlightInfo seq");
    check(md.has("input_schema"), "FlightInfo without input_schema");
    check(md.has("header"), "FlightInfo without header");
    checkEq(1, info.getEndpoints().size(), "FlightInfo endpoint count");
    FlightEndpoint endpoint = info.getEndpoints().get(0);
    check(endpoint.getLocations().isEmpty(), "endpoint has locations");
    return new Started(md, endpoint.getTicket().getBytes(), info.getSchema());
  }

  private Map<String, Object> decodeHeader(JsonNode md) throws Exception {
    byte[] ipc = Base64.getDecoder().decode(md.path("header").asText());
    return readSingleBatch(
        ipc,
        root -> {
          check(root.getRowCount() == 1, "header has " + root.getRowCount() + " rows");
          Map<String, Object> out = new java.util.LinkedHashMap<>();
          root.getFieldVectors().forEach(v -> out.put(v.getName(), plain(v.getObject(0))));
          return out;
        });
  }

  /** Rows of a logical batch, accumulated from data_part slices and the final data message. */
  private static final class Rows {
    final List<Long> i = new ArrayList<>();
    final List<String> text = new ArrayList<>();
    int parts;
  }

  private void producer() throws Exception {
    byte[] request =
        request(
            "generate",
            List.of(Field.notNullable("count", INT64), Field.notNullable("big_rows", INT64)),
            root -> {
              ((BigIntVector) root.getVector("count")).setSafe(0, 4);
              ((BigIntVector) root.getVector("big_rows")).setSafe(0, 300000);
            });
    Started started = getFlightInfo(request, "producer");
    checkEq(Map.of("count", 4L, "label", "generate 4"), decodeHeader(started.metadata()), "generate header");
    Schema input = readIpcSchema(Base64.getDecoder().decode(started.metadata().path("input_schema").asText()));
    check(input.getFields().isEmpty(), "producer input_schema is not empty: " + input);
    checkEq("[i, text]", started.schema().getFields().stream().map(Field::getName).toList().toString(), "generate schema");

    List<Rows> batches = new ArrayList<>();
    Rows pending = new Rows();
    byte[] ticket = started.ticket();
    try (FlightStream stream = client.getStream(new Ticket(ticket), signed("DoGet", ticket))) {
      boolean ready = false;
      while (stream.next()) {
        VectorSchemaRoot root = stream.getRoot();
        JsonNode md = metadataJson(stream.getLatestMetadata(), "DoGet message");
        String kind = md.path("kind").asText();
        if (!ready) {
          checkEq("ready", kind, "first DoGet message kind");
          checkEq(0, md.path("seq").asInt(-1), "ready seq");
          check(!md.has("header"), "ready carries a header outside the single-call path");
          check(root.getRowCount() == 0, "ready message has rows");
          ready = true;
          continue;
        }
        switch (kind) {
          case "log" -> check(root.getRowCount() == 0, "log message has rows");
          case "data_part", "data" -> {
            int seq = batches.size() + 1;
            checkEq(seq, md.path("seq").asInt(-1), kind + " seq");
            BigIntVector iv = (BigIntVector) root.getVector("i");
            VarCharVector tv = (VarCharVector) root.getVector("text");
            for (int r = 0; r < root.getRowCount(); r++) {
              pending.i.add(iv.get(r));
              pending.text.add(new String(tv.get(r), StandardCharsets.UTF_8));
            }
            if (kind.equals("data_part")) {
              pending.parts++;
            } else {
              check(!md.path("token").asText().isEmpty(), "data message without token");
              batches.add(pending);
              pending = new Rows();
            }
          }
          // §6: unknown zero-row kinds are ignored.
          default -> check(root.getRowCount() == 0, "unknown message kind with rows: " + kind);
        }
      }
      check(ready, "DoGet stream had no ready message");
    }
    check(pending.i.isEmpty(), "stream ended inside a sliced batch");
    checkEq(4, batches.size(), "generate data batch count");
    long[][] ranges = {{0, 10}, {0, 300000}, {20, 30}, {30, 40}};
    for (int b = 0; b < 4; b++) {
      Rows rows = batches.get(b);
      long from = ranges[b][0];
      int n = (int) (ranges[b][1] - from);
      checkEq(n, rows.i.size(), "batch seq " + (b + 1) + " row count");
      for (int r = 0; r < n; r++) {
        if (rows.i.get(r) != from + r || !rows.text.get(r).equals("row-" + (from + r))) {
          check(false, "batch seq " + (b + 1) + " row " + r + ": got i=" + rows.i.get(r) + " text=" + rows.text.get(r));
        }
      }
    }
    check(batches.get(1).parts > 0, "batch seq 2 (> 4 MiB) did not arrive as data_part slices");
    System.out.println("producer: ok (batch 2 arrived in " + (batches.get(1).parts + 1) + " messages)");
  }

  // ---------------------------------------------------------------- exchange (§5.3)

  /** Reads the next message, returning its app_metadata; fails if the stream ended. */
  private static JsonNode nextMessage(FlightStream reader, String where) throws Exception {
    check(reader.next(), where + ": stream ended early");
    return metadataJson(reader.getLatestMetadata(), where);
  }

  private static void expectReady(FlightStream reader, int seq) throws Exception {
    JsonNode md = nextMessage(reader, "exchange ready");
    checkEq("ready", md.path("kind").asText(), "first exchange message kind");
    checkEq(seq, md.path("seq").asInt(-1), "exchange ready seq");
    check(!md.has("header"), "ready carries a header outside the single-call path");
    check(reader.getRoot().getRowCount() == 0, "ready message has rows");
  }

  /** Sends one input batch, expects log "turn N" then one data message; returns the data token. */
  private byte[] turn(FlightClient.ExchangeReaderWriter x, VectorSchemaRoot in, double[] values,
      int turn, double total) throws Exception {
    in.allocateNew();
    Float8Vector v = (Float8Vector) in.getVector("value");
    for (int r = 0; r < values.length; r++) {
      v.setSafe(r, values[r]);
    }
    in.setRowCount(values.length);
    x.getWriter().putNext();

    FlightStream reader = x.getReader();
    JsonNode log = nextMessage(reader, "turn " + turn + " log");
    checkEq("log", log.path("kind").asText(), "turn " + turn + " first message kind");
    checkEq("INFO", log.path("level").asText(), "turn " + turn + " log level");
    checkEq("turn " + turn, log.path("message").asText(), "turn " + turn + " log message");
    check(reader.getRoot().getRowCount() == 0, "log message has rows");

    JsonNode data = nextMessage(reader, "turn " + turn + " data");
    checkEq("data", data.path("kind").asText(), "turn " + turn + " second message kind");
    checkEq(turn, data.path("seq").asInt(-1), "turn " + turn + " data seq");
    VectorSchemaRoot out = reader.getRoot();
    checkEq(1, out.getRowCount(), "turn " + turn + " data rows");
    checkEq(total, ((Float8Vector) out.getVector("total")).get(0), "turn " + turn + " total");
    checkEq((long) turn, ((BigIntVector) out.getVector("turns")).get(0), "turn " + turn + " turns");
    String token = data.path("token").asText();
    check(!token.isEmpty(), "data message without token");
    return Base64.getDecoder().decode(token);
  }

  /** Half-closes our side and reads to the end, so the call completes with OK. */
  private static void close(FlightClient.ExchangeReaderWriter x) throws Exception {
    x.getWriter().completed();
    FlightStream reader = x.getReader();
    while (reader.next()) {
      JsonNode md = metadataJson(reader.getLatestMetadata(), "after half-close");
      check(reader.getRoot().getRowCount() == 0, "unexpected data after half-close: " + md);
    }
    x.getResult();
    x.close();
  }

  private void exchange() throws Exception {
    byte[] request =
        request(
            "accumulate",
            List.of(Field.notNullable("start", FLOAT64)),
            root -> ((Float8Vector) root.getVector("start")).setSafe(0, 1.0));
    Started started = getFlightInfo(request, "exchange");
    checkEq(Map.of("start", 1.0), decodeHeader(started.metadata()), "accumulate header");
    Schema input = readIpcSchema(Base64.getDecoder().decode(started.metadata().path("input_schema").asText()));
    checkEq(1, input.getFields().size(), "input_schema field count");
    checkEq("value", input.getFields().get(0).getName(), "input_schema field name");
    checkEq(FLOAT64, input.getFields().get(0).getType(), "input_schema field type");

    byte[] ticket = started.ticket();
    byte[] token;
    try (VectorSchemaRoot in = VectorSchemaRoot.create(input, allocator)) {
      FlightClient.ExchangeReaderWriter x =
          client.doExchange(FlightDescriptor.command(ticket), signed("DoExchange", ticket));
      expectReady(x.getReader(), 0); // the server sends ready before reading any input
      x.getWriter().start(in);
      turn(x, in, new double[] {1.0, 2.0}, 1, 4.0);
      token = turn(x, in, new double[] {3.0}, 2, 7.0);
      close(x);
    }

    // Resume from the last data token: a new call, signed over the token (the first message's cmd).
    try (VectorSchemaRoot in = VectorSchemaRoot.create(input, allocator)) {
      FlightClient.ExchangeReaderWriter x =
          client.doExchange(FlightDescriptor.command(token), signed("DoExchange", token));
      expectReady(x.getReader(), 2);
      x.getWriter().start(in);
      turn(x, in, new double[] {10.0}, 3, 17.0);
      close(x);
    }
    System.out.println("exchange: ok");
  }
}
