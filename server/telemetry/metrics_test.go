package telemetry_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/admin"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// scrape reads the admin listener's /metrics as Prometheus does.
func scrape(t *testing.T, adminURL string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", res.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// value sums the series of a family whose labels include want: counters'
// and gauges' values, histograms' counts.
func value(families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := families[name]
	if !ok {
		return 0
	}
	var sum float64
series:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// TestMetrics_Traffic drives a server over Connect and gRPC (sign-ups, a
// chat, a live stream, sends, one refused by the send limit, an upload
// and its download) and scrapes its admin listener before, during and
// after: every series the traffic touches moves.
func TestMetrics_Traffic(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(cfg *app.Config) {
		// Two sends a protocol, then a refusal; nothing refills.
		cfg.Sends = chat.SendLimit{Rate: 1, Period: time.Hour, Burst: 2}
	}))
	adm := httptest.NewServer(admin.Handler(srv.App.Telemetry().Handler(), srv.App.Health()))
	defer adm.Close()
	before := scrape(t, adm.URL)

	var uploaded int
	for _, p := range servertest.Protocols {
		c := servertest.NewClients(srv, p)
		alice := servertest.Register(t, c.Auth, servertest.UniqueName("alice"))
		bob := servertest.Register(t, c.Auth, servertest.UniqueName("bob"))
		group := servertest.GroupChat(t, c.Chat, alice.Token, "metrics", bob.ID)

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		stream, err := c.Live.Subscribe(ctx, servertest.WithToken(&parleyv1.SubscribeRequest{}, bob.Token))
		if err != nil {
			t.Fatalf("%s: Subscribe: %v", p.Name, err)
		}
		receive := func(want func(*parleyv1.Event) bool) {
			t.Helper()
			for stream.Receive() {
				if want(stream.Msg().GetEvent()) {
					return
				}
			}
			t.Fatalf("%s: the stream ended: %v", p.Name, stream.Err())
		}
		receive(func(e *parleyv1.Event) bool { return e.GetReady() != nil })
		if open := value(scrape(t, adm.URL), "parley_live_streams", nil); open != 1 {
			t.Errorf("%s: parley_live_streams = %v with one stream open, want 1", p.Name, open)
		}

		servertest.Send(t, c.Message, alice.Token, group.GetId(), "one")
		receive(func(e *parleyv1.Event) bool { return e.GetMessageCreated() != nil })
		servertest.Send(t, c.Message, alice.Token, group.GetId(), "two")
		_, err = c.Message.SendMessage(context.Background(), servertest.WithToken(&parleyv1.SendMessageRequest{
			ChatId: group.GetId(), Text: "three", ClientMessageId: servertest.UniqueName("three"),
		}, alice.Token))
		servertest.WantCode(t, err, connect.CodeResourceExhausted)
		stream.Close()
		cancel()
		waitStreams(t, adm.URL, 0)

		data := bytes.Repeat([]byte("parley "), 1000)
		up, err := c.Media.CreateUpload(context.Background(), servertest.WithToken(&parleyv1.CreateUploadRequest{
			FileName: "notes.txt", ContentType: "text/plain", Size: int64(len(data)),
			Target: &parleyv1.CreateUploadRequest_ChatId{ChatId: group.GetId()},
		}, alice.Token))
		if err != nil {
			t.Fatalf("%s: CreateUpload: %v", p.Name, err)
		}
		if status := do(t, http.MethodPut, srv.URL+up.Msg.GetUploadUrl(), alice.Token, data); status != http.StatusOK {
			t.Fatalf("%s: PUT the upload: %d", p.Name, status)
		}
		uploaded += len(data)
		if status := do(t, http.MethodGet, srv.URL+up.Msg.GetMedia().GetUrl(), alice.Token, nil); status != http.StatusOK {
			t.Fatalf("%s: GET the file: %d", p.Name, status)
		}
	}
	after := scrape(t, adm.URL)

	const sendMessage = "parley.v1.MessageService/SendMessage"
	// Each series moves by at least least, or by exactly that where exact.
	moved := []struct {
		name   string
		labels map[string]string
		least  float64
		exact  bool
	}{
		// otelconnect's, through OpenTelemetry's Prometheus exporter: one
		// histogram for every protocol, by procedure and code.
		{"rpc_server_call_duration_seconds", map[string]string{"rpc_method": sendMessage, "rpc_system_name": "connectrpc", "rpc_response_status_code": "OK"}, 2, false},
		{"rpc_server_call_duration_seconds", map[string]string{"rpc_method": sendMessage, "rpc_system_name": "grpc", "rpc_response_status_code": "OK"}, 2, false},
		{"rpc_server_call_duration_seconds", map[string]string{"rpc_method": sendMessage, "rpc_response_status_code": "RESOURCE_EXHAUSTED"}, 3, false},
		{"rpc_server_call_duration_seconds", map[string]string{"rpc_method": "parley.v1.LiveService/Subscribe"}, 3, false},
		{"parley_live_events_published_total", nil, 6, false},
		{"parley_live_events_delivered_total", nil, 3, false},
		{"parley_live_fanout_lag_seconds", nil, 3, false},
		{"parley_store_call_duration_seconds", map[string]string{"store": "postgres"}, 1, false},
		{"parley_store_call_duration_seconds", map[string]string{"store": "mongodb", "operation": "insert"}, 6, false},
		{"parley_store_call_duration_seconds", map[string]string{"store": "redis"}, 1, false},
		{"parley_media_uploads_total", nil, 3, true},
		{"parley_media_upload_bytes_total", nil, float64(uploaded), true},
		{"parley_media_downloads_total", nil, 3, true},
		{"parley_media_download_bytes_total", nil, float64(uploaded), true},
		{"parley_rate_limited_total", map[string]string{"limit": "send"}, 3, true},
		{"rpc_server_call_duration_seconds", map[string]string{"rpc_method": sendMessage}, 9, true},
	}
	for _, m := range moved {
		d := value(after, m.name, m.labels) - value(before, m.name, m.labels)
		if m.exact && d != m.least {
			t.Errorf("%s%v moved by %v, want %v", m.name, m.labels, d, m.least)
		} else if d < m.least {
			t.Errorf("%s%v moved by %v, want at least %v", m.name, m.labels, d, m.least)
		}
	}
	// Exported, though this traffic moves none of them (the live
	// package's tests overflow a queue).
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "parley_live_events_dropped_total"} {
		if _, ok := after[name]; !ok {
			t.Errorf("no %s in /metrics", name)
		}
	}
	if t.Failed() {
		var names []string
		for name := range after {
			names = append(names, name)
		}
		t.Logf("families: %s", strings.Join(names, " "))
	}
}

// waitStreams waits for the server to count n open streams: a stream the
// client closed ends on the server when its handler notices.
func waitStreams(t *testing.T, adminURL string, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := value(scrape(t, adminURL), "parley_live_streams", nil)
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("parley_live_streams = %v, want %v", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// do makes a plain HTTP request with the token and returns the status,
// having read the answer.
func do(t *testing.T, method, url, token string, body []byte) int {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	io.Copy(io.Discard, res.Body)
	return res.StatusCode
}

// A client's Host header names no series: the file endpoints' metrics
// carry a fixed server name, not what each request claims.
func TestMetrics_HostIsNoLabel(t *testing.T) {
	srv := servertest.New(t)
	adm := httptest.NewServer(admin.Handler(srv.App.Telemetry().Handler(), srv.App.Health()))
	defer adm.Close()
	for _, host := range []string{"one.invalid", "two.invalid"} {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/media/000000000000000000000000", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	for name, f := range scrape(t, adm.URL) {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.HasSuffix(l.GetValue(), ".invalid") {
					t.Errorf("%s has the label %s=%q from a request's Host", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}
