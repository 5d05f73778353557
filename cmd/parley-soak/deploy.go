package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/redisconn"
)

// deployment is three (or -instances) Parley instances behind nginx, on
// the test stores: each instance reached by nginx through a proxy of its
// own, and reaching each Redis node through proxies of its own (nat
// parameters in its Redis URL), so that either path can be cut.
type deployment struct {
	cfg       config
	work      string
	name      string // database, Mongo database and Redis prefix
	dbURL     string
	url       string // nginx, https
	ca        *x509.CertPool
	nginxDir  string
	nodes     []string // the Redis Cluster's nodes, host:port
	rdb       redis.UniversalClient
	instances []*instance
}

type instance struct {
	n     int
	args  []string
	front *proxy   // nginx → instance
	redis []*proxy // instance → each Redis node

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	starts   int
	stopping bool     // the soak stops it: its exit is expected
	crashes  []string // exits the soak did not cause
}

// deploy starts everything, in cfg.work.
func deploy(ctx context.Context, cfg config) (*deployment, error) {
	d := &deployment{cfg: cfg, work: cfg.work, name: fmt.Sprintf("parley_soak_%d", os.Getpid())}
	var err error
	if d.rdb, err = redisconn.Open(ctx, cfg.redisURL); err != nil {
		return d, err
	}
	if !redisconn.IsCluster(d.rdb) {
		return d, errors.New("PARLEY_TEST_REDIS_URL is not a Redis Cluster (run under PARLEY_TEST_REDIS_CLUSTER=1 scripts/with-test-services)")
	}
	if d.nodes, err = clusterNodes(ctx, d.rdb, false); err != nil {
		return d, err
	}
	certFile, keyFile, err := d.certificate()
	if err != nil {
		return d, err
	}
	jwtKey := filepath.Join(d.work, "jwt.pem")
	if _, err := keyring.LoadOrCreateKey(jwtKey, true); err != nil {
		return d, err
	}
	if err := d.createDatabase(ctx); err != nil {
		return d, err
	}
	media := filepath.Join(d.work, "media")
	if err := os.MkdirAll(media, 0o755); err != nil {
		return d, err
	}
	for n := range cfg.instances {
		in, err := d.newInstance(n, jwtKey, media)
		if err != nil {
			return d, err
		}
		d.instances = append(d.instances, in)
		// One at a time: the first migrates the database.
		if err := in.start(ctx, d.work, cfg.parleyBin); err != nil {
			return d, err
		}
	}
	port, err := freePort()
	if err != nil {
		return d, err
	}
	d.nginxDir = filepath.Join(d.work, "nginx")
	if err := os.MkdirAll(d.nginxDir, 0o755); err != nil {
		return d, err
	}
	args := []string{d.nginxDir, strconv.Itoa(port), certFile, keyFile}
	for _, in := range d.instances {
		args = append(args, in.front.addr)
	}
	if err := d.script(ctx, "start-nginx", args...); err != nil {
		return d, err
	}
	d.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	return d, nil
}

// clusterNodes lists the addresses of the cluster's nodes, sorted: all of
// them, or with mastersOnly the masters that serve slots.
func clusterNodes(ctx context.Context, rdb redis.UniversalClient, mastersOnly bool) ([]string, error) {
	out, err := rdb.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, err
	}
	var nodes []string
	for line := range strings.Lines(out) {
		// id addr flags master ping pong epoch link [slot ranges...]
		f := strings.Fields(line)
		if len(f) < 8 || mastersOnly && (len(f) == 8 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail")) {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		nodes = append(nodes, addr)
	}
	slices.Sort(nodes)
	return nodes, nil
}

func (d *deployment) newInstance(n int, jwtKey, media string) (*instance, error) {
	in := &instance{n: n}
	var err error
	// Its address is known once it listens (start sets it).
	if in.front, err = newProxy(""); err != nil {
		return nil, err
	}
	// The instance's Redis URL names the nodes as the cluster announces
	// them, and translates each to a proxy of this instance's.
	q := url.Values{}
	for _, node := range d.nodes {
		p, err := newProxy(node)
		if err != nil {
			return nil, err
		}
		in.redis = append(in.redis, p)
		q.Add("nat", node+","+p.addr)
		if node != d.nodes[0] {
			q.Add("addr", node)
		}
	}
	redisURL := "redis://" + d.nodes[0] + "?" + q.Encode()
	in.args = []string{
		"-addr", "127.0.0.1:0", "-data-dir", filepath.Join(d.work, fmt.Sprintf("data-%d", n)),
		"-database-url", d.dbURL, "-mongo-uri", d.cfg.mongoURI, "-mongo-database", d.name,
		"-redis-url", redisURL, "-redis-prefix", d.name + ":",
		"-jwt-key-file", jwtKey, "-media-dir", media, "-client-ip-header", "X-Real-IP",
		"-log-level", "warn",
		// Every soak user registers and logs in from 127.0.0.1, and sends
		// faster than a person.
		"-registrations-per-address", "1000000", "-login-attempts-per-address", "1000000",
		"-unauthenticated-per-address", "1000000", "-send-rate", "1000", "-send-burst", "1000",
		// The longest allowed: clients refresh when it runs out.
		"-access-token-ttl", "15m",
	}
	return in, nil
}

// start runs the instance and waits until it listens.
func (in *instance) start(ctx context.Context, work, bin string) error {
	in.mu.Lock()
	in.starts++
	out := filepath.Join(work, fmt.Sprintf("instance-%d.%d.out", in.n, in.starts))
	logf, err := os.OpenFile(filepath.Join(work, fmt.Sprintf("instance-%d.log", in.n)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		in.mu.Unlock()
		return err
	}
	outf, err := os.Create(out)
	if err != nil {
		in.mu.Unlock()
		logf.Close()
		return err
	}
	cmd := exec.Command(bin, in.args...)
	cmd.Stdout, cmd.Stderr = outf, logf
	// An instance dies with the soak, however the soak ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		in.mu.Unlock()
		return err
	}
	exited := make(chan struct{})
	in.cmd, in.exited, in.stopping = cmd, exited, false
	in.mu.Unlock()
	go func() {
		err := cmd.Wait()
		outf.Close()
		logf.Close()
		in.mu.Lock()
		if !in.stopping {
			in.crashes = append(in.crashes, fmt.Sprintf("instance %d exited on its own: %v", in.n, err))
		}
		in.mu.Unlock()
		close(exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(out)
		if _, rest, ok := strings.Cut(string(b), "Parley is listening on http://"); ok {
			if addr, _, ok := strings.Cut(rest, " "); ok {
				// A restarted instance listens on another port.
				in.front.retarget(addr)
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("instance %d exited before listening (log: %s)", in.n, logf.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("instance %d did not listen within 60 s", in.n)
}

// stop signals the instance and waits for it to exit.
func (in *instance) stop(sig syscall.Signal) {
	in.mu.Lock()
	cmd, exited := in.cmd, in.exited
	in.mu.Unlock()
	if cmd == nil {
		return
	}
	in.mu.Lock()
	in.stopping = true
	in.mu.Unlock()
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// close stops everything deploy started and drops the PostgreSQL
// database (the Redis Cluster and the document engine are
// scripts/with-test-services's, removed with it).
func (d *deployment) close() {
	if d.nginxDir != "" {
		if b, err := os.ReadFile(filepath.Join(d.nginxDir, "nginx.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	}
	var wg sync.WaitGroup
	for _, in := range d.instances {
		wg.Go(func() { in.stop(syscall.SIGINT) })
	}
	wg.Wait()
	for _, in := range d.instances {
		in.front.close()
		for _, p := range in.redis {
			p.close()
		}
	}
	if d.dbURL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, d.cfg.databaseURL); err == nil {
			conn.Exec(ctx, "DROP DATABASE IF EXISTS "+d.name+" WITH (FORCE)")
			conn.Close(ctx)
		}
	}
	if d.rdb != nil {
		d.rdb.Close()
	}
}

// logs counts the lines each instance logged at level ERROR, and lists
// its exits that the soak did not cause and the panics in its logs.
func (d *deployment) logs() (errorLines []int, crashes []string) {
	for _, in := range d.instances {
		n := 0
		if f, err := os.Open(filepath.Join(d.work, fmt.Sprintf("instance-%d.log", in.n))); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				switch {
				case strings.Contains(line, "level=ERROR"), strings.Contains(line, `"level":"ERROR"`):
					n++
				case strings.HasPrefix(line, "panic: "), strings.HasPrefix(line, "fatal error: "):
					crashes = append(crashes, fmt.Sprintf("instance %d: %s", in.n, line))
				}
			}
			f.Close()
		}
		errorLines = append(errorLines, n)
		in.mu.Lock()
		crashes = append(crashes, in.crashes...)
		in.mu.Unlock()
	}
	return errorLines, crashes
}

func (d *deployment) createDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, d.cfg.databaseURL)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+d.name); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	u, err := url.Parse(d.cfg.databaseURL)
	if err != nil {
		return err
	}
	u.Path = "/" + d.name
	d.dbURL = u.String()
	return nil
}

// certificate writes a self-signed certificate for 127.0.0.1, which the
// soak's clients trust.
func (d *deployment) certificate() (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(48 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", err
	}
	d.ca = x509.NewCertPool()
	d.ca.AddCert(cert)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(d.work, "tls.crt"), filepath.Join(d.work, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}

// script runs one of the repository's scripts, its output to the soak's
// standard error.
func (d *deployment) script(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(d.cfg.scripts, name), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Env = append(os.Environ(), "PARLEY_NGINX="+d.cfg.nginx)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
