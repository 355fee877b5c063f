// Command interop-client calls the vgi-flight interop service with the official Go Flight library
// (github.com/apache/arrow-go/v18/arrow/flight) and docs/wire-protocol.md alone: no vgi-flight code.
//
// It reads VGI_LOCATION, VGI_CA, VGI_CERT, VGI_KEY, VGI_HMAC_KID and VGI_HMAC_SECRET_HEX, checks
// every result listed in tests/interop/README.md, prints "INTEROP OK go" on success and exits
// non-zero on the first mismatch.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const lang = "go"

var mem = memory.NewGoAllocator()

// failf aborts the run: every check in this program is fatal.
func failf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "INTEROP FAIL %s: %s\n", lang, fmt.Sprintf(format, args...))
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		failf("%s: %v", what, err)
	}
}

func expectEqual(what string, got, want any) {
	if !reflect.DeepEqual(got, want) {
		failf("%s: got %#v, want %#v", what, got, want)
	}
}

func mustEnv(name string) string {
	v := os.Getenv(name)
	if v == "" {
		failf("environment variable %s is not set", name)
	}
	return v
}

// ---------------------------------------------------------------------------------------------
// HMAC request signing (wire-protocol §11.1)

func signAt(kid string, secret []byte, ts, nonce, rpc string, payload []byte) string {
	sum := sha256.Sum256(payload)
	digest := hex.EncodeToString(sum[:])
	stringToSign := strings.Join([]string{"VGI-HMAC-SHA256", kid, ts, nonce, rpc, digest}, "\n")
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(stringToSign))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return fmt.Sprintf("VGI-HMAC-SHA256 kid=%s, ts=%s, nonce=%s, digest=%s, sig=%s", kid, ts, nonce, digest, sig)
}

func sign(kid string, secret []byte, rpc string, payload []byte) string {
	nonce := make([]byte, 12)
	if _, err := rand.Read(nonce); err != nil {
		failf("nonce: %v", err)
	}
	return signAt(kid, secret, strconv.FormatInt(time.Now().Unix(), 10), hex.EncodeToString(nonce), rpc, payload)
}

// checkWorkedExample reproduces wire-protocol §11.5 before talking to the server.
func checkWorkedExample() {
	secret, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	got := signAt("k-demo", secret, "1700000000", "0123456789abcdef01234567", "DoAction", []byte("whoami\n"))
	want := "VGI-HMAC-SHA256 kid=k-demo, ts=1700000000, nonce=0123456789abcdef01234567, " +
		"digest=33e7267d8409d63707706f95f3d67ee9be5fd3a2c6ffc60856c9baeca1ae3ed4, " +
		"sig=ppQuvJURVrutnPMzbu/15Em8+HezlJuLGe+DJ+t0ZQQ="
	expectEqual("HMAC worked example (§11.5)", got, want)
}

// ---------------------------------------------------------------------------------------------
// Client

type client struct {
	fc     flight.Client
	kid    string
	secret []byte
}

// signed returns ctx carrying one fresh `authorization` header for this call's payload.
func (c *client) signed(ctx context.Context, rpc string, payload []byte) context.Context {
	return c.signedWith(ctx, c.secret, rpc, payload)
}

func (c *client) signedWith(ctx context.Context, secret []byte, rpc string, payload []byte) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", sign(c.kid, secret, rpc, payload))
}

func dial() *client {
	location := mustEnv("VGI_LOCATION")
	u, err := url.Parse(location)
	check(err, "VGI_LOCATION")
	if u.Scheme != "grpc+tls" || u.Host == "" {
		failf("VGI_LOCATION must be grpc+tls://host:port, got %q", location)
	}
	cert, err := tls.LoadX509KeyPair(mustEnv("VGI_CERT"), mustEnv("VGI_KEY"))
	check(err, "client certificate")
	caPEM, err := os.ReadFile(mustEnv("VGI_CA"))
	check(err, "VGI_CA")
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		failf("VGI_CA holds no PEM certificate")
	}
	secret, err := hex.DecodeString(mustEnv("VGI_HMAC_SECRET_HEX"))
	check(err, "VGI_HMAC_SECRET_HEX")

	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   "localhost",
		MinVersion:   tls.VersionTLS12,
	})
	// gRPC's default 4 MiB receive limit is kept on purpose (the server slices big batches).
	fc, err := flight.NewClientWithMiddleware(u.Host, nil, nil, grpc.WithTransportCredentials(creds))
	check(err, "connect")
	return &client{fc: fc, kid: mustEnv("VGI_HMAC_KID"), secret: secret}
}

// ---------------------------------------------------------------------------------------------
// Arrow helpers

// callRequest encodes a call request (§2): an IPC stream whose schema metadata names the method and
// whose single batch holds one row of arguments, given as a JSON object.
func callRequest(method string, fields []arrow.Field, row string) []byte {
	md := arrow.NewMetadata([]string{"vgi.method", "vgi.version"}, []string{method, "1"})
	schema := arrow.NewSchema(fields, &md)
	var rec arrow.RecordBatch
	if len(fields) == 0 {
		rec = array.NewRecordBatch(schema, nil, 1)
	} else {
		var err error
		rec, _, err = array.RecordFromJSON(mem, schema, strings.NewReader("["+row+"]"))
		check(err, "build "+method+" arguments")
	}
	defer rec.Release()
	if rec.NumRows() != 1 {
		failf("%s arguments: %d rows", method, rec.NumRows())
	}
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	check(w.Write(rec), "write "+method+" arguments")
	check(w.Close(), "close "+method+" arguments")
	return buf.Bytes()
}

// readOneBatch decodes an IPC stream that must hold exactly one record batch.
func readOneBatch(data []byte, what string) arrow.RecordBatch {
	r, err := ipc.NewReader(bytes.NewReader(data), ipc.WithAllocator(mem))
	check(err, what)
	defer r.Release()
	if !r.Next() {
		failf("%s: no record batch (%v)", what, r.Err())
	}
	rec := r.RecordBatch()
	rec.Retain()
	if r.Next() {
		failf("%s: more than one record batch", what)
	}
	if r.Err() != nil && !errors.Is(r.Err(), io.EOF) {
		failf("%s: %v", what, r.Err())
	}
	return rec
}

func column(rec arrow.RecordBatch, name string) arrow.Array {
	idx := rec.Schema().FieldIndices(name)
	if len(idx) != 1 {
		failf("no column %q in %s", name, rec.Schema())
	}
	return rec.Column(idx[0])
}

func expectFields(what string, schema *arrow.Schema, want []arrow.Field) {
	if schema.NumFields() != len(want) {
		failf("%s: schema %s, want %d fields", what, schema, len(want))
	}
	for i, f := range want {
		got := schema.Field(i)
		if got.Name != f.Name || !arrow.TypeEqual(got.Type, f.Type) {
			failf("%s: field %d is %s, want %s", what, i, got, f)
		}
	}
}

func int64s(a arrow.Array) []int64 {
	v, ok := a.(*array.Int64)
	if !ok {
		failf("column is %s, want int64", a.DataType())
	}
	return append([]int64(nil), v.Int64Values()...)
}

func float64s(a arrow.Array) []float64 {
	v, ok := a.(*array.Float64)
	if !ok {
		failf("column is %s, want float64", a.DataType())
	}
	return append([]float64(nil), v.Float64Values()...)
}

func strs(a arrow.Array) []string {
	v, ok := a.(*array.String)
	if !ok {
		failf("column is %s, want utf8", a.DataType())
	}
	out := make([]string, v.Len())
	for i := range out {
		out[i] = v.Value(i)
	}
	return out
}

func stringList(a arrow.Array, row int) []string {
	l, ok := a.(*array.List)
	if !ok {
		failf("column is %s, want list", a.DataType())
	}
	start, end := l.ValueOffsets(row)
	values := strs(l.ListValues())
	return append([]string{}, values[start:end]...)
}

// ---------------------------------------------------------------------------------------------
// app_metadata and errors

type message struct {
	Kind    string          `json:"kind"`
	Seq     *int64          `json:"seq"`
	Token   string          `json:"token"`
	Header  string          `json:"header"`
	Level   string          `json:"level"`
	Message string          `json:"message"`
	Extra   json.RawMessage `json:"extra"`
}

func parseMessage(raw []byte, what string) message {
	var m message
	if err := json.Unmarshal(raw, &m); err != nil {
		failf("%s: app_metadata %q is not JSON: %v", what, raw, err)
	}
	if m.Kind == "" {
		failf("%s: app_metadata %q has no kind", what, raw)
	}
	return m
}

func (m message) seq(what string) int64 {
	if m.Seq == nil {
		failf("%s: %s message without seq", what, m.Kind)
	}
	return *m.Seq
}

func (m message) token(what string) []byte {
	tok, err := base64.StdEncoding.DecodeString(m.Token)
	check(err, what+": token")
	if !bytes.HasPrefix(tok, []byte("VGT1")) {
		failf("%s: token does not start with VGT1", what)
	}
	return tok
}

type vgiError struct {
	grpcCode codes.Code
	Code     string `json:"code"`
	Type     string `json:"error_type"`
	Message  string `json:"error_message"`
}

// parseError reads the JSON object at the start of a failed call's status message (§9).
func parseError(err error, what string) vgiError {
	if err == nil {
		failf("%s: succeeded, want an error", what)
	}
	st, ok := status.FromError(err)
	if !ok {
		failf("%s: not a gRPC status error: %v", what, err)
	}
	msg := st.Message()
	start := strings.Index(msg, "{")
	if start < 0 {
		failf("%s: status message is not JSON: %q", what, msg)
	}
	var e vgiError
	if err := json.NewDecoder(strings.NewReader(msg[start:])).Decode(&e); err != nil {
		failf("%s: status message is not JSON: %q (%v)", what, msg, err)
	}
	e.grpcCode = st.Code()
	return e
}

// ---------------------------------------------------------------------------------------------
// Unary calls (§4)

// doAction runs a unary method signed with `secret` and returns the last Result (the return value).
func (c *client) doAction(ctx context.Context, secret []byte, method string, body []byte) ([]byte, error) {
	payload := append([]byte(method+"\n"), body...)
	stream, err := c.fc.DoAction(c.signedWith(ctx, secret, "DoAction", payload), &flight.Action{Type: method, Body: body})
	if err != nil {
		return nil, err
	}
	var results [][]byte
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		results = append(results, r.Body)
	}
	if len(results) == 0 {
		failf("%s: no Result", method)
	}
	for _, log := range results[:len(results)-1] {
		parseMessage(log, method+" log record")
	}
	return results[len(results)-1], nil
}

func (c *client) unary(ctx context.Context, method string, fields []arrow.Field, row string) arrow.RecordBatch {
	body, err := c.doAction(ctx, c.secret, method, callRequest(method, fields, row))
	check(err, method)
	rec := readOneBatch(body, method+" result")
	if rec.NumRows() != 1 && rec.NumCols() > 0 {
		failf("%s result: %d rows", method, rec.NumRows())
	}
	return rec
}

var (
	pointType = arrow.StructOf(
		arrow.Field{Name: "x", Type: arrow.PrimitiveTypes.Float64},
		arrow.Field{Name: "y", Type: arrow.PrimitiveTypes.Float64},
		arrow.Field{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String)},
	)
	pointField = arrow.Field{Name: "p", Type: pointType}
)

func testUnary(ctx context.Context, c *client) {
	// add(a=2, b=40) = 42
	add := []arrow.Field{{Name: "a", Type: arrow.PrimitiveTypes.Int64}, {Name: "b", Type: arrow.PrimitiveTypes.Int64}}
	rec := c.unary(ctx, "add", add, `{"a": 2, "b": 40}`)
	expectFields("add result schema", rec.Schema(), []arrow.Field{{Name: "result", Type: arrow.PrimitiveTypes.Int64}})
	expectEqual("add(2, 40)", int64s(column(rec, "result")), []int64{42})
	rec.Release()

	// describe_point with label null, then "P"
	describe := []arrow.Field{pointField, {Name: "label", Type: arrow.BinaryTypes.String, Nullable: true}}
	rec = c.unary(ctx, "describe_point", describe, `{"p": {"x": 1.5, "y": -2.0, "tags": ["a", "b"]}, "label": null}`)
	expectEqual("describe_point(label=null)", strs(column(rec, "result")), []string{"point:1.5,-2:2"})
	rec.Release()
	rec = c.unary(ctx, "describe_point", describe, `{"p": {"x": 1.5, "y": -2.0, "tags": ["a", "b"]}, "label": "P"}`)
	expectEqual("describe_point(label=P)", strs(column(rec, "result")), []string{"P:1.5,-2:2"})
	rec.Release()

	// scale returns a struct
	scale := []arrow.Field{pointField, {Name: "factor", Type: arrow.PrimitiveTypes.Float64}}
	rec = c.unary(ctx, "scale", scale, `{"p": {"x": 1.0, "y": 2.0, "tags": ["t"]}, "factor": 2.5}`)
	expectFields("scale result schema", rec.Schema(), []arrow.Field{{Name: "result", Type: pointType}})
	point := column(rec, "result").(*array.Struct)
	expectEqual("scale x", float64s(point.Field(0)), []float64{2.5})
	expectEqual("scale y", float64s(point.Field(1)), []float64{5.0})
	expectEqual("scale tags", stringList(point.Field(2), 0), []string{"t"})
	rec.Release()

	// noop answers with the empty schema
	rec = c.unary(ctx, "noop", nil, "")
	expectEqual("noop result columns", rec.Schema().NumFields(), 0)
	rec.Release()

	// fail raises ValueError
	_, err := c.doAction(ctx, c.secret, "fail", callRequest("fail", []arrow.Field{{Name: "message", Type: arrow.BinaryTypes.String}}, `{"message": "boom"}`))
	e := parseError(err, "fail")
	expectEqual("fail code", e.Code, "UNKNOWN")
	expectEqual("fail gRPC code", e.grpcCode, codes.Unknown)
	expectEqual("fail error_type", e.Type, "ValueError")
	expectEqual("fail error_message", e.Message, "boom")

	// whoami is the principal of the HMAC key
	rec = c.unary(ctx, "whoami", nil, "")
	expectEqual("whoami", strs(column(rec, "result")), []string{"interop-client"})
	rec.Release()

	// a wrong secret is refused
	wrong := sha256.Sum256([]byte("not the secret"))
	_, err = c.doAction(ctx, wrong[:], "add", callRequest("add", add, `{"a": 2, "b": 40}`))
	e = parseError(err, "add with a wrong secret")
	expectEqual("wrong secret gRPC code", e.grpcCode, codes.Unauthenticated)
	expectEqual("wrong secret code", e.Code, "UNAUTHENTICATED")
	expectEqual("wrong secret error_message", e.Message, "authentication failed")
}

// ---------------------------------------------------------------------------------------------
// Streams (§5)

type streamInfo struct {
	Kind        string `json:"kind"`
	InputSchema string `json:"input_schema"`
	Seq         *int64 `json:"seq"`
	Header      string `json:"header"`
}

// getFlightInfo starts a stream and returns its app_metadata, decoded header and initial token.
func (c *client) getFlightInfo(ctx context.Context, request []byte, what string) (*flight.FlightInfo, streamInfo, arrow.RecordBatch, []byte) {
	desc := &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: request}
	info, err := c.fc.GetFlightInfo(c.signed(ctx, "GetFlightInfo", request), desc)
	check(err, what+": GetFlightInfo")
	var si streamInfo
	if err := json.Unmarshal(info.AppMetadata, &si); err != nil {
		failf("%s: FlightInfo.app_metadata %q: %v", what, info.AppMetadata, err)
	}
	if si.Seq == nil || *si.Seq != 0 {
		failf("%s: FlightInfo seq is not 0: %s", what, info.AppMetadata)
	}
	if len(info.Endpoint) != 1 || info.Endpoint[0].Ticket == nil {
		failf("%s: want exactly one endpoint with a ticket, got %d", what, len(info.Endpoint))
	}
	ticket := info.Endpoint[0].Ticket.Ticket
	if !bytes.HasPrefix(ticket, []byte("VGT1")) {
		failf("%s: ticket is not a state token", what)
	}
	if si.Header == "" {
		failf("%s: FlightInfo has no header", what)
	}
	raw, err := base64.StdEncoding.DecodeString(si.Header)
	check(err, what+": header base64")
	return info, si, readOneBatch(raw, what+" header"), ticket
}

type logicalBatch struct {
	seq   int64
	parts int // data_part messages before the data message
	i     []int64
	text  []string
}

func testProducer(ctx context.Context, c *client) {
	const bigRows = 300000
	request := callRequest("generate",
		[]arrow.Field{{Name: "count", Type: arrow.PrimitiveTypes.Int64}, {Name: "big_rows", Type: arrow.PrimitiveTypes.Int64}},
		fmt.Sprintf(`{"count": 4, "big_rows": %d}`, bigRows))
	info, si, header, ticket := c.getFlightInfo(ctx, request, "generate")
	expectEqual("generate kind", si.Kind, "producer")
	expectEqual("generate header count", int64s(column(header, "count")), []int64{4})
	expectEqual("generate header label", strs(column(header, "label")), []string{"generate 4"})
	header.Release()
	outFields := []arrow.Field{{Name: "i", Type: arrow.PrimitiveTypes.Int64}, {Name: "text", Type: arrow.BinaryTypes.String}}
	outSchema, err := flight.DeserializeSchema(info.Schema, mem)
	check(err, "generate: FlightInfo.schema")
	expectFields("generate output schema", outSchema, outFields)

	stream, err := c.fc.DoGet(c.signed(ctx, "DoGet", ticket), &flight.Ticket{Ticket: ticket})
	check(err, "generate: DoGet")
	rdr, err := flight.NewRecordReader(stream, ipc.WithAllocator(mem))
	check(err, "generate: DoGet stream")
	defer rdr.Release()
	expectFields("DoGet schema", rdr.Schema(), outFields)

	var (
		n       int
		batches []logicalBatch
		pending *logicalBatch
	)
	for rdr.Next() {
		rec := rdr.RecordBatch()
		what := fmt.Sprintf("DoGet message %d", n)
		m := parseMessage(rdr.LatestAppMetadata(), what)
		if n == 0 && m.Kind != "ready" {
			failf("%s: kind %q, want ready first", what, m.Kind)
		}
		n++
		switch m.Kind {
		case "ready":
			if n != 1 {
				failf("%s: a second ready message", what)
			}
			expectEqual("ready seq", m.seq(what), int64(0))
			m.token(what)
		case "log":
			// logs may precede data; nothing expected from generate
		case "data_part", "data":
			seq := m.seq(what)
			if pending == nil {
				pending = &logicalBatch{seq: seq}
			} else if pending.seq != seq {
				failf("%s: seq %d inside batch %d", what, seq, pending.seq)
			}
			pending.i = append(pending.i, int64s(column(rec, "i"))...)
			pending.text = append(pending.text, strs(column(rec, "text"))...)
			if m.Kind == "data_part" {
				pending.parts++
				continue
			}
			m.token(what)
			batches = append(batches, *pending)
			pending = nil
		default:
			if rec.NumRows() != 0 {
				failf("%s: unknown kind %q with rows", what, m.Kind)
			}
		}
	}
	if err := rdr.Err(); err != nil && !errors.Is(err, io.EOF) {
		failf("generate: DoGet stream: %v", err)
	}
	if pending != nil {
		failf("generate: stream ended inside batch %d", pending.seq)
	}
	if len(batches) != 4 {
		failf("generate: %d data batches, want 4", len(batches))
	}
	for k, b := range batches {
		expectEqual(fmt.Sprintf("batch %d seq", k+1), b.seq, int64(k+1))
		var want []int64
		if k == 1 {
			want = make([]int64, bigRows)
			for j := range want {
				want[j] = int64(j)
			}
			if b.parts == 0 {
				failf("batch 2 (%d rows) arrived without data_part slices", len(b.i))
			}
		} else {
			for j := 10 * k; j < 10*k+10; j++ {
				want = append(want, int64(j))
			}
			expectEqual(fmt.Sprintf("batch %d data_part slices", k+1), b.parts, 0)
		}
		expectEqual(fmt.Sprintf("batch %d i", k+1), b.i, want)
		wantText := make([]string, len(want))
		for j, v := range want {
			wantText[j] = "row-" + strconv.FormatInt(v, 10)
		}
		expectEqual(fmt.Sprintf("batch %d text", k+1), b.text, wantText)
	}
}

type turn struct {
	values []float64
	total  float64
	turns  int64
	seq    int64
}

// exchange opens DoExchange with `token` as the command, checks `ready`, runs the turns, then
// half-closes and reads the stream to its end. It returns the token of the last data message.
func (c *client) exchange(ctx context.Context, token []byte, input *arrow.Schema, readySeq int64, turns []turn) []byte {
	ctx, cancel := context.WithCancel(c.signed(ctx, "DoExchange", token))
	defer cancel()
	stream, err := c.fc.DoExchange(ctx)
	check(err, "DoExchange")
	// The first message carries only the descriptor (CMD = token); the server answers with the
	// output schema and `ready` before it reads any input.
	check(stream.Send(&flight.FlightData{FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: token}}), "DoExchange: send descriptor")
	rdr, err := flight.NewRecordReader(stream, ipc.WithAllocator(mem))
	check(err, "DoExchange: output stream")
	defer rdr.Release()
	outFields := []arrow.Field{{Name: "total", Type: arrow.PrimitiveTypes.Float64}, {Name: "turns", Type: arrow.PrimitiveTypes.Int64}}
	expectFields("DoExchange output schema", rdr.Schema(), outFields)

	next := func(what string) (arrow.RecordBatch, message) {
		if !rdr.Next() {
			failf("%s: stream ended early (%v)", what, rdr.Err())
		}
		return rdr.RecordBatch(), parseMessage(rdr.LatestAppMetadata(), what)
	}
	_, ready := next("DoExchange ready")
	expectEqual("DoExchange first message kind", ready.Kind, "ready")
	expectEqual("DoExchange ready seq", ready.seq("ready"), readySeq)
	if ready.Header != "" {
		failf("DoExchange ready carries a header on the token path")
	}
	last := ready.token("ready")

	w := flight.NewRecordWriter(stream, ipc.WithSchema(input), ipc.WithAllocator(mem))
	for _, t := range turns {
		what := fmt.Sprintf("turn %d", t.turns)
		b := array.NewFloat64Builder(mem)
		b.AppendValues(t.values, nil)
		col := b.NewArray()
		b.Release()
		rec := array.NewRecordBatch(input, []arrow.Array{col}, int64(len(t.values)))
		col.Release()
		check(w.Write(rec), what+": write")
		rec.Release()

		var logs []string
		for {
			rec, m := next(what)
			if m.Kind == "log" {
				expectEqual(what+" log level", m.Level, "INFO")
				logs = append(logs, m.Message)
				continue
			}
			if m.Kind != "data" {
				failf("%s: unexpected %q message", what, m.Kind)
			}
			expectEqual(what+" logs", logs, []string{fmt.Sprintf("turn %d", t.turns)})
			expectEqual(what+" seq", m.seq(what), t.seq)
			expectEqual(what+" total", float64s(column(rec, "total")), []float64{t.total})
			expectEqual(what+" turns", int64s(column(rec, "turns")), []int64{t.turns})
			last = m.token(what)
			break
		}
	}
	check(w.Close(), "DoExchange: close writer")
	check(stream.CloseSend(), "DoExchange: half-close")
	if rdr.Next() {
		m := parseMessage(rdr.LatestAppMetadata(), "after half-close")
		failf("DoExchange: unexpected %q message after half-close", m.Kind)
	}
	if err := rdr.Err(); err != nil && !errors.Is(err, io.EOF) {
		failf("DoExchange: ended with %v", err)
	}
	return last
}

func testExchange(ctx context.Context, c *client) {
	request := callRequest("accumulate", []arrow.Field{{Name: "start", Type: arrow.PrimitiveTypes.Float64}}, `{"start": 1.0}`)
	_, si, header, ticket := c.getFlightInfo(ctx, request, "accumulate")
	expectEqual("accumulate kind", si.Kind, "exchange")
	expectEqual("accumulate header start", float64s(column(header, "start")), []float64{1.0})
	header.Release()
	raw, err := base64.StdEncoding.DecodeString(si.InputSchema)
	check(err, "accumulate: input_schema base64")
	input, err := flight.DeserializeSchema(raw, mem)
	check(err, "accumulate: input_schema")
	expectFields("accumulate input_schema", input, []arrow.Field{{Name: "value", Type: arrow.PrimitiveTypes.Float64}})

	token := c.exchange(ctx, ticket, input, 0, []turn{
		{values: []float64{1.0, 2.0}, total: 4.0, turns: 1, seq: 1},
		{values: []float64{3.0}, total: 7.0, turns: 2, seq: 2},
	})
	c.exchange(ctx, token, input, 2, []turn{
		{values: []float64{10.0}, total: 17.0, turns: 3, seq: 3},
	})
}

func main() {
	checkWorkedExample()
	c := dial()
	defer c.fc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	testUnary(ctx, c)
	testProducer(ctx, c)
	testExchange(ctx, c)
	fmt.Printf("INTEROP OK %s\n", lang)
}
