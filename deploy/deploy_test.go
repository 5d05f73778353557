// Package deploy_test runs the deployment files in deploy/ for real:
// nginx/parley.conf in front of two Parley instances on the test stores,
// with TLS from a certificate made here.
package deploy_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// nginxBinary finds nginx: PARLEY_TEST_NGINX (make test installs Debian's
// nginx and names it), else nginx on the PATH or in /usr/sbin; without it
// the test is skipped, unless PARLEY_TEST_NGINX named it.
func nginxBinary(t *testing.T) string {
	if p := os.Getenv("PARLEY_TEST_NGINX"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("PARLEY_TEST_NGINX: %v", err)
		}
		return p
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	t.Skip("nginx is not installed (make test installs it)")
	return ""
}

// proxy is nginx running deploy/nginx/parley.conf.
type proxy struct {
	url   string
	roots *x509.CertPool
}

// client returns an HTTP client of the proxy: HTTP/2 over TLS, or
// HTTP/1.1 over TLS when http1; from the local address from when set.
func (p *proxy) client(http1 bool, from string) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: p.roots, ServerName: "localhost"},
		ForceAttemptHTTP2: !http1,
	}
	if http1 {
		var ps http.Protocols
		ps.SetHTTP1(true)
		tr.Protocols = &ps
	}
	if from != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		tr.DialContext = d.DialContext
	}
	return &http.Client{Transport: tr}
}

// startNginx runs nginx with the committed configuration in front of the
// instances, through scripts/start-nginx (which scripts/behind-nginx uses
// too): changed only in the instances' addresses, the listen address and
// the certificate.
func startNginx(t *testing.T, a, b string) *proxy {
	t.Helper()
	bin := nginxBinary(t)
	dir := t.TempDir()
	roots, _, _ := servertest.SelfSignedCert(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	cmd := exec.Command("../scripts/start-nginx", dir, port, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"),
		strings.TrimPrefix(a, "http://"), strings.TrimPrefix(b, "http://"))
	cmd.Env = append(os.Environ(), "PARLEY_NGINX="+bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("start nginx: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(dir, "nginx.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGTERM) // fast shutdown
			}
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", log)
		}
	})
	return &proxy{url: "https://127.0.0.1:" + port, roots: roots}
}

// fakeAddresses gives each registration made directly on an instance an
// address of its own (the instances trust X-Real-IP), so that only the
// test of the header meets the registration limit.
var fakeAddresses atomic.Uint32

func directAuth(srv *servertest.Server) parleyv1connect.AuthServiceClient {
	spoof := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			n := fakeAddresses.Add(1)
			req.Header().Set("X-Real-IP", fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255))
			return next(ctx, req)
		}
	})
	return parleyv1connect.NewAuthServiceClient(http.DefaultClient, srv.URL, connect.WithInterceptors(spoof))
}

// registrationsPerAddress is the instances' limit, low enough to meet.
const registrationsPerAddress = 3

// TestNginx runs deploy/nginx/parley.conf in front of two instances and
// speaks every protocol through it: Connect JSON as curl sends it, the
// generated clients over Connect (HTTP/1.1 and HTTP/2), gRPC and gRPC-Web,
// live streams that deliver at once and stay open, idle, for minutes, a
// 200 MB upload and its download, and -client-ip-header.
func TestNginx(t *testing.T) {
	mediaDir := t.TempDir()
	instance := func() *servertest.Server {
		return servertest.New(t, servertest.WithConfig(func(cfg *app.Config) {
			cfg.MediaDir = mediaDir // shared, as every deployment's must be
			cfg.ClientIPHeader = "X-Real-IP"
			cfg.RateLimits = auth.RateLimits{
				LoginFailuresPerAccount: 1000, LoginAttemptsPerAddress: 1000, LoginWindow: time.Minute,
				RegistrationsPerAddress: registrationsPerAddress, RegistrationWindow: time.Hour,
			}
			// Longer than nginx's default timeouts (60 s), so that only
			// the configuration's keep an idle stream open.
			cfg.Live.Heartbeat = 10 * time.Minute
		}))
	}
	a, b := instance(), instance()
	px := startNginx(t, a.URL, b.URL)

	t.Run("curl", func(t *testing.T) {
		for _, http1 := range []bool{true, false} {
			res, err := px.client(http1, "").Post(px.url+"/parley.v1.ServerService/GetServerInfo", "application/json", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"api":"parley.v1"`) {
				t.Errorf("GetServerInfo over %s: %d %s", res.Proto, res.StatusCode, body)
			}
			if wantProto := map[bool]string{true: "HTTP/1.1", false: "HTTP/2.0"}[http1]; res.Proto != wantProto {
				t.Errorf("answered over %s, want %s", res.Proto, wantProto)
			}
		}
		res, err := px.client(false, "").Get(px.url + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET /readyz through nginx: %d", res.StatusCode)
		}
	})

	protocols := []struct {
		name  string
		http1 bool
		opts  []connect.ClientOption
	}{
		{"connect-http1", true, nil},
		{"connect-http2", false, nil},
		{"grpc", false, []connect.ClientOption{connect.WithGRPC()}},
		{"grpcweb", true, []connect.ClientOption{connect.WithGRPCWeb()}},
	}
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			hc := px.client(p.http1, "")
			chats := parleyv1connect.NewChatServiceClient(hc, px.url, p.opts...)
			messages := parleyv1connect.NewMessageServiceClient(hc, px.url, p.opts...)
			lives := parleyv1connect.NewLiveServiceClient(hc, px.url, p.opts...)
			alice := servertest.Register(t, directAuth(a), servertest.UniqueName("alice"))
			bob := servertest.Register(t, directAuth(b), servertest.UniqueName("bob"))
			group := servertest.GroupChat(t, chats, alice.Token, "through nginx", bob.ID)
			stream := subscribe(t, lives, bob.Token)
			for i := range 3 {
				sent := servertest.Send(t, messages, alice.Token, group.GetId(), fmt.Sprintf("hello %d", i))
				stream.waitMessage(t, sent.GetId())
			}
			// A request refused before any handler (by the
			// authentication middleware) keeps its code through nginx:
			// a gRPC refusal whose status nginx dropped would reach
			// the client as UNKNOWN, which it cannot act on.
			_, err := messages.ListMessages(t.Context(), connect.NewRequest(&parleyv1.ListMessagesRequest{ChatId: group.GetId()}))
			if got := connect.CodeOf(err); got != connect.CodeUnauthenticated {
				t.Errorf("ListMessages without a token through nginx: %v (code %v), want unauthenticated", err, got)
			}
		})
	}

	t.Run("idle stream", func(t *testing.T) {
		t.Parallel()
		chats := parleyv1connect.NewChatServiceClient(px.client(false, ""), px.url)
		messages := parleyv1connect.NewMessageServiceClient(px.client(true, ""), px.url)
		alice := servertest.Register(t, directAuth(a), servertest.UniqueName("alice"))
		bob := servertest.Register(t, directAuth(b), servertest.UniqueName("bob"))
		group := servertest.GroupChat(t, chats, alice.Token, "idle", bob.ID)
		var streams []*eventStream
		for _, p := range protocols {
			streams = append(streams, subscribe(t, parleyv1connect.NewLiveServiceClient(px.client(p.http1, ""), px.url, p.opts...), bob.Token))
		}
		// Nothing crosses the streams for over two minutes, twice
		// nginx's default read and send timeouts (60 s) and longer than
		// Parley's idle-connection timeout (2 min); then a message
		// reaches each.
		time.Sleep(125 * time.Second)
		sent := servertest.Send(t, messages, alice.Token, group.GetId(), "still there?")
		for i, s := range streams {
			t.Logf("%s: waiting", protocols[i].name)
			s.waitMessage(t, sent.GetId())
		}
	})

	t.Run("upload 200 MB", func(t *testing.T) {
		t.Parallel()
		const size = 200 << 20
		hc := px.client(false, "")
		chats := parleyv1connect.NewChatServiceClient(hc, px.url)
		files := parleyv1connect.NewMediaServiceClient(hc, px.url)
		alice := servertest.Register(t, directAuth(a), servertest.UniqueName("alice"))
		bob := servertest.Register(t, directAuth(b), servertest.UniqueName("bob"))
		group := servertest.GroupChat(t, chats, alice.Token, "files", bob.ID)
		up, err := files.CreateUpload(t.Context(), servertest.WithToken(&parleyv1.CreateUploadRequest{
			FileName: "big.bin", ContentType: "application/octet-stream", Size: size,
			Target: &parleyv1.CreateUploadRequest_ChatId{ChatId: group.GetId()},
		}, alice.Token))
		if err != nil {
			t.Fatalf("CreateUpload: %v", err)
		}
		sum := sha256.New()
		req, err := http.NewRequest(http.MethodPut, px.url+up.Msg.GetUploadUrl(), io.TeeReader(io.LimitReader(rand.Reader, size), sum))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = size
		req.Header.Set("Authorization", "Bearer "+alice.Token)
		res, err := hc.Do(req)
		if err != nil {
			t.Fatalf("PUT: %v", err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("PUT through nginx: %d %s", res.StatusCode, body)
		}
		// Sent to the chat, then downloaded by Bob, over HTTP/1.1.
		messages := parleyv1connect.NewMessageServiceClient(hc, px.url)
		if _, err := messages.SendMessage(t.Context(), servertest.WithToken(&parleyv1.SendMessageRequest{
			ChatId: group.GetId(), MediaIds: []string{up.Msg.GetMedia().GetId()}, ClientMessageId: servertest.UniqueName("file"),
		}, alice.Token)); err != nil {
			t.Fatalf("SendMessage with the file: %v", err)
		}
		req, _ = http.NewRequest(http.MethodGet, px.url+up.Msg.GetMedia().GetUrl(), nil)
		req.Header.Set("Authorization", "Bearer "+bob.Token)
		res, err = px.client(true, "").Do(req)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		defer res.Body.Close()
		got := sha256.New()
		n, err := io.Copy(got, res.Body)
		if err != nil || res.StatusCode != http.StatusOK || n != size {
			t.Fatalf("GET through nginx: %d, %d bytes, %v", res.StatusCode, n, err)
		}
		if string(got.Sum(nil)) != string(sum.Sum(nil)) {
			t.Error("the file downloaded differs from the file uploaded")
		}
	})

	t.Run("client ip", func(t *testing.T) {
		// Clients on two loopback addresses, each with a registration
		// budget of its own: the instances see the address nginx puts in
		// X-Real-IP, not nginx's, and not what a client puts there.
		register := func(from, spoof string) error {
			c := parleyv1connect.NewAuthServiceClient(px.client(true, from), px.url)
			req := connect.NewRequest(&parleyv1.RegisterRequest{
				Username: servertest.UniqueName("ip"), Email: servertest.UniqueName("ip") + "@example.com", Password: "correct horse battery",
			})
			req.Header().Set("X-Real-IP", spoof)
			_, err := c.Register(t.Context(), req)
			return err
		}
		for i := range registrationsPerAddress {
			if err := register("127.0.0.2", fmt.Sprintf("192.0.2.%d", i+1)); err != nil {
				t.Fatalf("registration %d from 127.0.0.2: %v", i+1, err)
			}
		}
		servertest.WantCode(t, register("127.0.0.2", "192.0.2.99"), connect.CodeResourceExhausted)
		if err := register("127.0.0.3", "127.0.0.2"); err != nil {
			t.Errorf("a registration from 127.0.0.3: %v", err)
		}
	})

	// nginx spread the requests over both instances. (The tests register
	// their users on the instances directly: Register is not counted.)
	t.Cleanup(func() {
		for name, s := range map[string]*servertest.Server{"first": a, "second": b} {
			if n := rpcCount(t, s); n == 0 {
				t.Errorf("the %s instance served no RPC", name)
			}
		}
	})
}

// rpcCount is how many RPCs other than Register an instance has timed.
func rpcCount(t *testing.T, s *servertest.Server) uint64 {
	families, err := s.App.Telemetry().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, f := range families {
		if f.GetName() == "rpc_server_call_duration_seconds" {
			for _, m := range f.GetMetric() {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == "rpc_method" && l.GetValue() == "parley.v1.AuthService/Register"
				}) {
					n += m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return n
}

// eventStream is a live stream read in the background.
type eventStream struct {
	events chan *parleyv1.Event
	err    chan error
}

// subscribe opens a live stream and waits for its ready event.
func subscribe(t *testing.T, c parleyv1connect.LiveServiceClient, token string) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := c.Subscribe(ctx, servertest.WithToken(&parleyv1.SubscribeRequest{}, token))
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	s := &eventStream{events: make(chan *parleyv1.Event, 64), err: make(chan error, 1)}
	go func() {
		for stream.Receive() {
			s.events <- stream.Msg().GetEvent()
		}
		s.err <- fmt.Errorf("the stream ended: %w", stream.Err())
	}()
	s.wait(t, func(e *parleyv1.Event) bool { return e.GetReady() != nil })
	return s
}

func (s *eventStream) wait(t *testing.T, want func(*parleyv1.Event) bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case e := <-s.events:
			if want(e) {
				return
			}
		case err := <-s.err:
			t.Fatal(err)
		case <-timeout:
			t.Fatal("no such event within 30 s")
		}
	}
}

func (s *eventStream) waitMessage(t *testing.T, id string) {
	t.Helper()
	s.wait(t, func(e *parleyv1.Event) bool { return e.GetMessageCreated().GetMessage().GetId() == id })
}

// TestSystemdUnit checks systemd/parley.service with systemd-analyze
// verify, which must neither fail nor warn. The binary and the
// environment file are put where the unit expects them to be, in a copy.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	unit, err := os.ReadFile("systemd/parley.service")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := string(unit)
	for _, r := range []struct{ old, new string }{
		{"ExecStart=/usr/local/bin/parley\n", "ExecStart=" + self + "\n"},
		{"EnvironmentFile=/etc/parley/parley.env\n", "EnvironmentFile=" + filepath.Join(dir, "parley.env") + "\n"},
	} {
		if !strings.Contains(text, r.old) {
			t.Fatalf("systemd/parley.service no longer has %q; update the test", r.old)
		}
		text = strings.Replace(text, r.old, r.new, 1)
	}
	env, err := os.ReadFile("systemd/parley.env")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "parley.env"), env, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "parley.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
