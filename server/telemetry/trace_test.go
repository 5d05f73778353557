package telemetry_test

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// receiver is an OTLP/HTTP trace receiver: it keeps the spans exported to
// it and signals each export.
type receiver struct {
	mu       sync.Mutex
	spans    []*tracev1.Span
	services []string
	got      chan struct{}
}

func newReceiver(t *testing.T) (*receiver, string) {
	r := &receiver{got: make(chan struct{}, 1)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1/traces" {
			http.NotFound(w, req)
			return
		}
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		var export collectortrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &export)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range export.GetResourceSpans() {
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					r.services = append(r.services, a.GetValue().GetStringValue())
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				r.spans = append(r.spans, ss.GetSpans()...)
			}
		}
		r.mu.Unlock()
		select {
		case r.got <- struct{}{}:
		default:
		}
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return r, srv.URL
}

// trace returns the spans received so far of one trace.
func (r *receiver) trace(id []byte) []*tracev1.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*tracev1.Span
	for _, s := range r.spans {
		if bytes.Equal(s.GetTraceId(), id) {
			out = append(out, s)
		}
	}
	return out
}

// records parses a server's JSON log.
func records(log *servertest.SyncBuffer) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(log.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil {
			out = append(out, rec)
		}
	}
	return out
}

// TestTracing_SendMessage sends one message with a client's W3C
// traceparent, to a server whose OTEL_* environment points at an OTLP
// receiver, over each protocol: the trace that arrives is the client's,
// with the RPC's span under the client's and spans of MongoDB, Redis and
// PostgreSQL calls under the RPC's; the request's log line carries the
// trace id.
func TestTracing_SendMessage(t *testing.T) {
	recv, endpoint := newReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", "parley-under-test")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	logs := &servertest.SyncBuffer{}
	srv := servertest.New(t, servertest.WithLog(slog.NewJSONHandler(logs, nil)))
	if !srv.App.Telemetry().Tracing() {
		t.Fatal("tracing is off with OTEL_EXPORTER_OTLP_ENDPOINT set")
	}

	for i, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			alice := servertest.Register(t, c.Auth, servertest.UniqueName("alice"))
			bob := servertest.Register(t, c.Auth, servertest.UniqueName("bob"))
			chat := servertest.PrivateChat(t, c.Chat, alice.Token, bob.ID)
			servertest.AcceptRequest(t, c.Chat, bob.Token, chat.GetId())

			traceID := bytes.Repeat([]byte{0x4b, byte(i + 1)}, 8)
			parentID := bytes.Repeat([]byte{0x5c, byte(i + 1)}, 4)
			req := servertest.WithToken(&parleyv1.SendMessageRequest{
				ChatId: chat.GetId(), Text: "traced", ClientMessageId: servertest.UniqueName("traced"),
			}, alice.Token)
			req.Header().Set("traceparent", "00-"+hex.EncodeToString(traceID)+"-"+hex.EncodeToString(parentID)+"-01")
			if _, err := c.Message.SendMessage(t.Context(), req); err != nil {
				t.Fatalf("SendMessage: %v", err)
			}

			const name = "parley.v1.MessageService/SendMessage"
			spans, rpc := recv.waitTrace(t, traceID, name, "mongodb", "redis", "postgresql")
			if !bytes.Equal(rpc.GetParentSpanId(), parentID) {
				t.Errorf("the RPC span's parent = %x, want the client's span %x", rpc.GetParentSpanId(), parentID)
			}
			if rpc.GetKind() != tracev1.Span_SPAN_KIND_SERVER {
				t.Errorf("the RPC span's kind = %v, want SERVER", rpc.GetKind())
			}
			if n := countNamed(spans, name); n != 1 {
				t.Errorf("%d SendMessage spans in the trace, want 1", n)
			}
			t.Logf("trace: %s", names(spans))

			waitLogged(t, logs, traceID, func(procedure string) bool { return procedure == "/"+name })
		})
	}
	// An upload, a plain HTTP endpoint: its span (otelhttp) continues the
	// client's trace too, with the store calls under it.
	t.Run("upload", func(t *testing.T) {
		c := servertest.NewClients(srv, servertest.Protocols[0])
		alice := servertest.Register(t, c.Auth, servertest.UniqueName("alice"))
		bob := servertest.Register(t, c.Auth, servertest.UniqueName("bob"))
		chat := servertest.PrivateChat(t, c.Chat, alice.Token, bob.ID)
		data := bytes.Repeat([]byte("traced "), 100)
		up, err := c.Media.CreateUpload(t.Context(), servertest.WithToken(&parleyv1.CreateUploadRequest{
			FileName: "notes.txt", ContentType: "text/plain", Size: int64(len(data)),
			Target: &parleyv1.CreateUploadRequest_ChatId{ChatId: chat.GetId()},
		}, alice.Token))
		if err != nil {
			t.Fatalf("CreateUpload: %v", err)
		}
		traceID := bytes.Repeat([]byte{0x6d}, 16)
		parentID := bytes.Repeat([]byte{0x7e}, 8)
		req, err := http.NewRequest(http.MethodPut, srv.URL+up.Msg.GetUploadUrl(), bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+alice.Token)
		req.Header.Set("traceparent", "00-"+hex.EncodeToString(traceID)+"-"+hex.EncodeToString(parentID)+"-01")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("PUT: %v", err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("PUT: %s", res.Status)
		}
		_, put := recv.waitTrace(t, traceID, "PUT /media/{id}", "mongodb")
		if !bytes.Equal(put.GetParentSpanId(), parentID) || put.GetKind() != tracev1.Span_SPAN_KIND_SERVER {
			t.Errorf("the upload's span: parent %x, kind %v; want the client's span %x, SERVER", put.GetParentSpanId(), put.GetKind(), parentID)
		}
		waitLogged(t, logs, traceID, func(procedure string) bool { return strings.HasPrefix(procedure, "/media/") })
	})

	recv.mu.Lock()
	defer recv.mu.Unlock()
	for _, s := range recv.services {
		if s != "parley-under-test" {
			t.Errorf("service.name = %q, want OTEL_SERVICE_NAME's", s)
		}
	}
}

// waitTrace waits for the trace to hold a span named name with spans of
// each of the stores under it (spans are exported in batches, every 50 ms
// here), and returns the trace's spans and that span.
func (r *receiver) waitTrace(t *testing.T, traceID []byte, name string, stores ...string) ([]*tracev1.Span, *tracev1.Span) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		spans := r.trace(traceID)
		for _, s := range spans {
			if s.GetName() == name && !slices.ContainsFunc(stores, func(store string) bool { return !hasChild(spans, s, store) }) {
				return spans, s
			}
		}
		select {
		case <-r.got:
		case <-deadline:
			t.Fatalf("the trace did not arrive whole: %d spans: %s", len(spans), names(spans))
		}
	}
}

// waitLogged waits for a request log line of the trace whose procedure
// matches: the line is written once the handler returned, which may be
// after its spans went out.
func waitLogged(t *testing.T, logs *servertest.SyncBuffer, traceID []byte, match func(procedure string) bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		for _, rec := range records(logs) {
			if rec["msg"] == "request" && rec["trace_id"] == hex.EncodeToString(traceID) && match(fmt.Sprint(rec["procedure"])) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no request log line carries trace_id %x", traceID)
			return
		}
	}
}

// hasChild reports whether a span of the store db.system.name (or
// db.system) is below parent in spans.
func hasChild(spans []*tracev1.Span, parent *tracev1.Span, system string) bool {
	byID := map[string]*tracev1.Span{}
	for _, s := range spans {
		byID[string(s.GetSpanId())] = s
	}
	for _, s := range spans {
		if storeOf(s) != system {
			continue
		}
		for p := byID[string(s.GetParentSpanId())]; p != nil; p = byID[string(p.GetParentSpanId())] {
			if p == parent {
				return true
			}
		}
	}
	return false
}

func storeOf(s *tracev1.Span) string {
	for _, a := range s.GetAttributes() {
		if a.GetKey() == "db.system.name" || a.GetKey() == "db.system" {
			return a.GetValue().GetStringValue()
		}
	}
	return ""
}

func countNamed(spans []*tracev1.Span, name string) int {
	n := 0
	for _, s := range spans {
		if s.GetName() == name {
			n++
		}
	}
	return n
}

func names(spans []*tracev1.Span) string {
	var out []string
	for _, s := range spans {
		out = append(out, s.GetName()+"["+storeOf(s)+"]")
	}
	return strings.Join(out, ", ")
}
